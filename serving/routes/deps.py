"""The dependencies routes declare: the app's state, the served model, the admin token."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from serving.runtime import LoadedModel
from serving.state import ServingState


async def serving_state(request: Request) -> ServingState:
    """The app's one ServingState. Async on purpose: FastAPI runs a sync dependency on a
    thread. /predict awaits this directly instead of declaring it, to skip FastAPI's
    dependency resolution on the hot path (about 10 µs of a 140 µs request)."""
    return request.app.state.serving


StateDep = Annotated[ServingState, Depends(serving_state)]


class DirectRoute(APIRoute):
    """A route whose endpoint takes the request alone and returns its response: called as it
    is, without FastAPI's dependency resolution (which parses the query string and the
    cookies of every request for an endpoint that declares neither: 11% of a /predict's CPU
    in a profile), and documented like any other route, from its decorator's arguments.

    FastAPI's documented extension point (`route_class`, `get_route_handler`); the endpoint
    reads its body and the state itself, and its errors reach the app's exception handlers
    as any route's do."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


async def served_model(name: str, state: StateDep) -> LoadedModel:
    """The model a V2 path names: 503 before one is loaded, 404 for another name."""
    model = state.model()
    if name != model.name:
        raise HTTPException(404, f"model {name!r} is not served here; {model.name!r} is")
    return model


ServedModelDep = Annotated[LoadedModel, Depends(served_model)]


def _check_bearer(expected: str, authorization: str | None, what: str) -> None:
    """`Authorization: Bearer <token>` (the scheme is case-insensitive, RFC 9110); with no token
    configured the routes are off (403). Anything else, a bare token included, is a 401."""
    if not expected:
        raise HTTPException(403, f"{what} disabled: no token is set")
    scheme, _, token = (authorization or "").partition(" ")
    valid = scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(errors="replace"), expected.encode()
    )
    if not valid:
        raise HTTPException(
            401,
            "authorization: a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_admin(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """The admin token (MLOPS_SERVE__ADMIN_TOKEN)."""
    _check_bearer(state.config.admin_token, authorization, "admin endpoints are")


async def require_events(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """The events token (MLOPS_EVENTS__TOKEN): events change every client's answers."""
    _check_bearer(state.events.token, authorization, "events are")
