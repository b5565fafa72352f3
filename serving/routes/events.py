"""POST /v1/events: the facts features are made of, as they become observable.

Behind the events token (`require_events`: 403 when none is set, 401 without it). Each event
is checked alone: the batch's answer counts what was applied and what was already in (a
re-sent id), and names each refused event's index, field and reason (it is quarantined). The
answer comes once the accepted events are on disk (`serving.live`). 503 until the first model
is loaded (the store starts from its lookups); 501 with several workers and no stream (each
would hold a store of its own); 503 when the stream cannot be written (nothing accepted).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from serving.routes.deps import require_events, serving_state
from serving.routes.openapi import BODY_ERRORS, VALIDATION_ERROR, json_body, schema_of
from serving.routes.predict import in_body
from serving.routes.responses import ModelResponse
from serving.schemas import ErrorResponse, EventsResponse, RefusedEvent, events_request
from serving.stream import StreamUnavailableError

EVENTS_ERRORS = {
    401: {"model": ErrorResponse, "description": "no or wrong token"},
    403: {"model": ErrorResponse, "description": "events are disabled: no token is set"},
    501: {"model": ErrorResponse, "description": "several workers: one store each"},
}


def router(max_events: int) -> APIRouter:
    request_model = events_request(max_events)
    routes = APIRouter(dependencies=[Depends(require_events)])

    @routes.post(
        "/v1/events",
        response_model=EventsResponse,
        responses={422: VALIDATION_ERROR, **EVENTS_ERRORS, **BODY_ERRORS},
        openapi_extra=json_body(schema_of(request_model)),
    )
    async def post_events(request: Request) -> ModelResponse:
        """Apply events to the online store (Authorization: Bearer <events token>)."""
        state = await serving_state(request)
        if state.live is None:
            raise HTTPException(
                501,
                "several workers need the event stream (MLOPS_EVENTS__STREAM_URL=redis://...): "
                "each would hold a store of its own",
            )
        try:
            body = request_model.model_validate_json(await request.body())
        except ValidationError as error:
            raise RequestValidationError(in_body(error)) from None
        state.model()  # 503 until a model is loaded (the store starts from it) and caught up
        events = body.events  # type: ignore[attr-defined]
        if state.stream is not None:  # every worker applies it; this one answers
            try:
                report = await state.stream.publish(events)
            except StreamUnavailableError as error:
                raise HTTPException(503, str(error), headers={"Retry-After": "5"}) from None
        else:  # validation, the store and the fsync'd log: off the event loop
            report = await asyncio.to_thread(state.live.ingest, events)
        state.metrics.observe_events(report, state.live.newest())
        refused = [RefusedEvent(index=i, field=f, reason=r) for i, f, r in report.refused]
        return ModelResponse(
            EventsResponse(accepted=report.applied, duplicates=report.duplicates, refused=refused)
        )

    return routes
