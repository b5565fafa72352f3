"""The API's own protocol: POST /predict (one prediction per flight, in order) and GET /model.

/predict is the hot path, and every microsecond here shows in its throughput
(benchmarks/RESULTS.md): it parses its body with pydantic-core straight from the bytes and
reaches the state without FastAPI's dependency resolution.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.responses import Response

from pipelines.transform import AS_OF, RAW_INPUTS
from serving.batcher import Answer
from serving.routes.deps import DirectRoute, StateDep, serving_state
from serving.routes.openapi import BODY_ERRORS, UNAVAILABLE, VALIDATION_ERROR, json_body, schema_of
from serving.routes.responses import ModelResponse
from serving.schemas import ModelInfo, PredictResponse, ReloadResponse


def predictions_of(answer: Answer) -> Response:
    """The batcher's answer as /predict (and MLflow's /invocations) return it: a
    `PredictResponse`, serialized by pydantic-core straight from the arrays' values (building
    the models first, to serialize them, was a fifth of a /predict's CPU in a profile). The
    route's `response_model` documents it; the tests validate answers against it."""
    body = {
        "predictions": [
            {"delay_probability": p, "delayed": d, "defaults_used": u, "as_of": a, "stale": s}
            for p, d, u, a, s in zip(
                answer.probabilities.tolist(),
                answer.delayed.tolist(),
                answer.defaults_used,
                answer.as_of,
                answer.stale,
                strict=True,
            )
        ],
        "model": {"name": answer.model.name, "version": answer.model.version},
    }
    return Response(to_json(body), media_type="application/json")


def in_body(error: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as FastAPI reports a body's: located under `body` (the 422 handler,
    `responses.invalid_request`, cuts their inputs short)."""
    return [{**e, "loc": ["body", *e["loc"]]} for e in error.errors(include_url=False)]


def router(request_model: type[BaseModel]) -> APIRouter:
    """Built per app: the request model carries the configured limit of flights per request."""
    routes = APIRouter()

    async def predict(request: Request) -> Response:
        """One prediction per flight, in order; unknown values fall back to training defaults."""
        state = await serving_state(request)
        # pydantic-core parses and validates the bytes in one pass: the same model and the
        # same 422s as FastAPI's body parameter, without its generic dependency machinery
        try:
            body = request_model.model_validate_json(await request.body())
        except ValidationError as error:
            raise RequestValidationError(in_body(error)) from None
        flights = body.flights  # type: ignore[attr-defined]
        rows = [{name: getattr(flight, name) for name in RAW_INPUTS} for flight in flights]
        for row, flight in zip(rows, flights, strict=True):
            if flight.as_of is not None:  # only then: the transform's default is cheaper
                row[AS_OF] = flight.as_of
        answer = await state.score(rows)
        return predictions_of(answer)

    routes.add_api_route(
        "/predict",
        predict,
        methods=["POST"],
        route_class_override=DirectRoute,  # the hot path: no dependency resolution
        response_model=PredictResponse,
        responses={422: VALIDATION_ERROR, **BODY_ERRORS},
        openapi_extra=json_body(schema_of(request_model)),
    )

    @routes.get("/model", response_model=None, responses=UNAVAILABLE)
    async def model_info(state: StateDep) -> ModelResponse:
        """The served model: version, source, checksums, threshold, and the last reload."""
        model = state.model()
        last = state.manager.last_result
        info = ModelInfo(
            name=model.name,
            version=model.version,
            source=model.bundle.source,
            loaded_at=model.loaded_at.isoformat(),
            onnx_sha256=model.bundle.metadata.get("onnx_sha256"),
            feature_spec_sha256=model.bundle.metadata.get("feature_spec_sha256"),
            decision_threshold=model.threshold,
            providers=model.session.get_providers(),
            inputs=RAW_INPUTS,
            train_months=model.spec.splits["train"].months,
            last_reload=(
                None if last is None else ReloadResponse.model_validate(last, from_attributes=True)
            ),
            problem=None if state.manager.problem is None else state.manager.status(),
            pid=os.getpid(),
            events=state.events_info(),
        )
        return ModelResponse(info)

    return routes
