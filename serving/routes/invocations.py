"""MLflow's scoring protocol: POST /invocations with `dataframe_split` or `dataframe_records`,
so that MLflow's clients (and `mlflow models predict`) work unchanged. Bad input is MLflow's
400 `{"error_code", "message"}`, the message naming the field."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic_core import from_json

from serving.excerpts import cut
from serving.protocols import InvalidInputError, from_invocations
from serving.routes.deps import StateDep
from serving.routes.openapi import BODY_ERRORS, json_body
from serving.routes.predict import predictions_of
from serving.routes.responses import ModelResponse
from serving.schemas import MlflowError

router = APIRouter()

EXAMPLE = {
    "dataframe_split": {
        "columns": ["carrier", "flight", "origin", "dest", "scheduled_departure"],
        "data": [["UA", 1545, "EWR", "IAH", "2013-12-01T05:15:00"]],
    }
}


def _bad_request(message: str) -> ModelResponse:
    return ModelResponse(MlflowError(error_code="BAD_REQUEST", message=message), 400)


@router.post(
    "/invocations",
    responses={400: {"description": "MLflow-style error"}, **BODY_ERRORS},
    openapi_extra=json_body({"type": "object"}, example=EXAMPLE),
)
async def invocations(request: Request, state: StateDep) -> Response:
    """MLflow's scoring protocol (`dataframe_split` or `dataframe_records`)."""
    try:
        # pydantic-core's parser, not json's: faster, and nesting deeper than 200 is an error
        # instead of a RecursionError (MLflow's bodies nest four deep)
        body = from_json(await request.body())
    except ValueError as error:  # its message is the parser's reason and position, no input
        return _bad_request(f"body: not JSON ({cut(str(error))})")
    try:
        rows = from_invocations(body, state.config.max_request_rows)
    except InvalidInputError as error:
        return _bad_request(str(error))
    answer = await state.score(rows)
    return predictions_of(answer)
