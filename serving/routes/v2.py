"""The Open Inference Protocol (KServe V2), so Triton's and KServe's clients work unchanged.

The model's inputs are /predict's raw fields, one 1-D tensor each (JSON, or the binary tensor
extension); its output is `delay_probability`. Bad input is V2's 400 `{"error": message}`.
The metadata routes are documented as plain JSON objects, as they were before their bodies had
models: documenting the models is a change of the OpenAPI document, left for its own commit.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from pipelines.contract import OUTPUT
from serving.batcher import NotReadyError
from serving.protocols import V2_INPUTS, InvalidInputError, from_v2, parse_v2
from serving.routes.deps import ServedModelDep, StateDep, served_model
from serving.routes.openapi import BODY_ERRORS, UNAVAILABLE, json_body, schema_of
from serving.routes.responses import ModelResponse
from serving.schemas import (
    ErrorResponse,
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
    V2ModelReady,
    V2ServerLive,
    V2ServerMetadata,
    V2ServerReady,
    V2Tensor,
    V2TensorMetadata,
)

router = APIRouter(tags=["v2"])

UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such model here"}
}
SERVER = V2ServerMetadata(name="mlops-flights", version="0.1.0", extensions=[])


@router.get("/v2", response_model=dict)
async def v2_server() -> ModelResponse:
    return ModelResponse(SERVER)


@router.get("/v2/health/live", response_model=dict)
async def v2_live() -> ModelResponse:
    return ModelResponse(V2ServerLive(live=True))


@router.get(
    "/v2/health/ready",
    response_model=None,
    responses={
        503: {
            "description": "not ready: no model loaded yet, behind the event stream, or "
            "stopping (after SIGTERM, `MLOPS_SERVE__DRAIN_S`)"
        }
    },
)
async def v2_ready(state: StateDep) -> ModelResponse:
    try:
        state.model()
    except NotReadyError:
        return ModelResponse(V2ServerReady(ready=False), 503)
    if state.stopping.is_set():  # SIGTERM's drain: serving still, but not for long
        return ModelResponse(V2ServerReady(ready=False), 503)
    return ModelResponse(V2ServerReady(ready=True))


@router.get("/v2/models/{name}", response_model=dict, responses={**UNKNOWN, **UNAVAILABLE})
async def v2_metadata(model: ServedModelDep) -> ModelResponse:
    metadata = V2ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform="onnxruntime_onnx",
        inputs=[
            V2TensorMetadata(name=field, datatype=datatype, shape=[-1])
            for field, datatype in V2_INPUTS.items()
        ],
        outputs=[V2TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1])],
    )
    return ModelResponse(metadata)


@router.get("/v2/models/{name}/ready", response_model=dict, responses={**UNKNOWN, **UNAVAILABLE})
async def v2_model_ready(model: ServedModelDep) -> ModelResponse:
    return ModelResponse(V2ModelReady(name=model.name, ready=True))


@router.post(
    "/v2/models/{name}/infer",
    response_model=V2InferResponse,
    responses={400: {"description": "V2 error: {'error': message}"}, **UNKNOWN, **BODY_ERRORS},
    openapi_extra=json_body(schema_of(V2InferRequest)),
    dependencies=[Depends(served_model)],  # 503 before a model is loaded, 404 for another name
)
async def v2_infer(request: Request, state: StateDep) -> ModelResponse:
    """Named 1-D tensors, one per raw field; JSON or the binary tensor extension."""
    header = request.headers.get("inference-header-content-length")
    try:
        body = parse_v2(await request.body(), header, state.config.max_request_rows)
        rows = from_v2(body, state.config.max_request_rows)
    except InvalidInputError as error:
        return ModelResponse(V2Error(error=str(error)), 400)
    answer = await state.score(rows)
    output = V2Tensor(
        name=OUTPUT,
        shape=[len(answer.probabilities)],
        datatype="FP32",
        data=answer.probabilities.tolist(),
    )
    response = V2InferResponse(
        model_name=answer.model.name,
        model_version=answer.model.version,
        id=body.id,
        outputs=[output],
    )
    # exclude_unset: no `parameters` on the output tensor (the request's may carry them)
    return ModelResponse(response, exclude_unset=True)
