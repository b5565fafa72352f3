"""How the routers answer: response models as JSON, and the errors every protocol shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from serving.admission import RETRY_AFTER_S
from serving.batcher import NotReadyError, OverloadedError, ScoringError
from serving.excerpts import excerpt
from serving.routes.deps import serving_state
from serving.schemas import ErrorResponse

# A 422 names the first problems, not all: 10,000 flights missing five fields each were 50,000
# errors, megabytes of response built on the event loop.
MAX_ERRORS = 10


class ModelResponse(Response):
    """A response model rendered by pydantic-core in one pass (faster than building dicts
    for `json.dumps`, which is what returning them to FastAPI or JSONResponse costs)."""

    media_type = "application/json"

    def __init__(
        self,
        content: BaseModel,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        exclude_unset: bool = False,
    ) -> None:
        body = content.__pydantic_serializer__.to_json(content, exclude_unset=exclude_unset)
        super().__init__(body, status_code, headers)


async def not_ready(request: Request, error: Exception) -> Response:
    """No model yet, or shutting down: 503, when to try again, and (with no model) why not:
    what the manager last met, as `/model` would say it."""
    detail = str(error)
    state = await serving_state(request)
    if state.slot.current is None:
        detail = f"{detail}: {state.manager.status()}"
    return ModelResponse(ErrorResponse(detail=detail), 503, headers={"Retry-After": "5"})


async def overloaded(request: Request, error: Exception) -> Response:
    """Queued past the deadline (or the queue filled while the body was read): 503, retry soon."""
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return ModelResponse(ErrorResponse(detail=str(error)), 503, headers=headers)


async def scoring_failed(request: Request, error: Exception) -> Response:
    """Valid flights the model could not score: the server's fault, never the input's."""
    return ModelResponse(ErrorResponse(detail=str(error)), 500)


async def invalid_request(request: Request, error: RequestValidationError) -> Response:
    """FastAPI's 422 body (`{"detail": [{"type", "loc", "msg", "input", ...}]}`), with at most
    MAX_ERRORS errors and each quoting only an excerpt of its input."""
    detail = [_quoted(found) for found in error.errors()[:MAX_ERRORS]]
    return JSONResponse({"detail": detail}, 422)


def _quoted(error: Any) -> dict[str, Any]:
    quoted = {key: excerpt(value) for key, value in error.items() if key not in ("loc", "ctx")}
    quoted["loc"] = [excerpt(part) for part in error.get("loc", ())]
    if "ctx" in error:  # the limits that were broken, or the validator's exception
        quoted["ctx"] = {key: excerpt(value) for key, value in error["ctx"].items()}
    return quoted


EXCEPTION_HANDLERS = {
    NotReadyError: not_ready,
    OverloadedError: overloaded,
    ScoringError: scoring_failed,
    RequestValidationError: invalid_request,
}
