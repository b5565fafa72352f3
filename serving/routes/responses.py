"""How the routers answer: response models as JSON, and the errors every protocol shares."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from serving.admission import RETRY_AFTER_S
from serving.batcher import NotReadyError, OverloadedError, ScoringError
from serving.schemas import ErrorResponse


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
    """No model yet, or shutting down: 503, and when to try again."""
    return ModelResponse(ErrorResponse(detail=str(error)), 503, headers={"Retry-After": "5"})


async def overloaded(request: Request, error: Exception) -> Response:
    """Queued past the deadline (or the queue filled while the body was read): 503, retry soon."""
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return ModelResponse(ErrorResponse(detail=str(error)), 503, headers=headers)


async def scoring_failed(request: Request, error: Exception) -> Response:
    """Valid flights the model could not score: the server's fault, never the input's."""
    return ModelResponse(ErrorResponse(detail=str(error)), 500)


EXCEPTION_HANDLERS = {
    NotReadyError: not_ready,
    OverloadedError: overloaded,
    ScoringError: scoring_failed,
}
