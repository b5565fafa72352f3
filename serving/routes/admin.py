"""POST /admin/reload: check the model source now and swap in a new version.

Every route here is behind the admin token (`require_admin`): 401 without the right bearer
token, 403 when no token is configured (the admin routes are then off).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from serving.routes.deps import StateDep, require_admin
from serving.routes.openapi import BODY_ERRORS
from serving.routes.responses import ModelResponse
from serving.schemas import ErrorResponse, ReloadRequest, ReloadResponse

router = APIRouter(dependencies=[Depends(require_admin)])

# else 200: loaded, or unchanged. A busy or transient answer says when to try again.
RELOAD_STATUS = {"refused": 409, "busy": 409, "failed": 503, "unavailable": 503}
RETRY = {"busy": "1", "failed": "5", "unavailable": "5"}
RELOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no or wrong token"},
    403: {"model": ErrorResponse, "description": "admin endpoints are disabled"},
    409: {
        "model": ReloadResponse,
        "description": "the new version was refused, or another reload is running (busy)",
    },
    503: {
        "model": ReloadResponse,
        "description": "the source is unreachable or the download failed: retried by itself",
    },
}


@router.post(
    "/admin/reload", response_model=ReloadResponse, responses={**RELOAD_ERRORS, **BODY_ERRORS}
)
async def admin_reload(state: StateDep, body: ReloadRequest | None = None) -> ModelResponse:
    """Check the source now and swap in a new version (Authorization: Bearer <token>)."""
    result = await state.manager.reload(force=body.force if body else False)
    response = ReloadResponse.model_validate(result, from_attributes=True)
    retry = RETRY.get(result.outcome)
    return ModelResponse(
        response,
        RELOAD_STATUS.get(result.outcome, 200),
        headers=None if retry is None else {"Retry-After": retry},
    )
