"""The FastAPI app: /predict, MLflow's /invocations, the Open Inference Protocol (V2), /model,
/metrics and /admin/reload, over one micro-batcher and a hot-swappable model slot.

`create_app(config, source)` is the factory; `mlops serve` builds both from the settings.
HTTP status codes are chosen here and only here.
"""

# No `from __future__ import annotations`: FastAPI reads the request model of /predict, which
# the factory builds from the configured batch limit, from the live annotation.

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from pipelines.transform import RAW_INPUTS
from serving.batcher import Answer, MicroBatcher, ModelSlot, NotReadyError, ScoringError
from serving.config import ServeConfig
from serving.manager import ModelManager, Source
from serving.metrics import ServingMetrics
from serving.protocols import (
    V2_INPUTS,
    InvalidInputError,
    from_invocations,
    from_v2,
    parse_v2,
)
from serving.runtime import OUTPUT, Scored
from serving.schemas import (
    ErrorResponse,
    PredictResponse,
    ReloadRequest,
    ReloadResponse,
    V2InferRequest,
    V2InferResponse,
    predict_request,
)

logger = logging.getLogger(__name__)

# FastAPI's own 422 body (a route with a body parameter, /admin/reload, puts it in components)
VALIDATION_ERROR = {
    "description": "Validation Error: the field and the reason",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or while streaming."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                response = JSONResponse(
                    {"detail": f"body: {int(declared)} bytes; the limit is {self.max_bytes}"}, 413
                )
                await response(scope, receive, send)
            else:  # HTTP/1.1 framing: the server reads no more than the declared length
                await self.app(scope, receive, send)
            return
        received = 0  # chunked: count while streaming

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"body: over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Requests and latency by endpoint (the route's template) and status."""

    def __init__(self, app, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                endpoint, scope["method"], status, time.perf_counter() - started
            )


def _predictions(answer: Answer) -> list[dict[str, Any]]:
    return [
        {"delay_probability": p, "delayed": d, "defaults_used": u}
        for p, d, u in zip(
            answer.probabilities.tolist(),
            answer.delayed.tolist(),
            answer.defaults_used,
            strict=True,
        )
    ]


def _model_ref(answer: Answer) -> dict[str, str]:
    return {"name": answer.model.name, "version": answer.model.version}


def create_app(config: ServeConfig, source: Source) -> FastAPI:
    slot = ModelSlot()
    metrics = ServingMetrics()
    manager = ModelManager(source, slot, metrics, config.threads, config.drift_window_rows)

    def on_batch(scored: Scored, seconds: float) -> None:
        metrics.batch_rows.observe(len(scored.probabilities))
        metrics.batch_seconds.observe(seconds)
        metrics.rows_scored.inc(len(scored.probabilities))
        if metrics.drift is not None:
            metrics.drift.update(scored.numerical, scored.missing)

    batcher = MicroBatcher(slot, config.max_batch, config.max_wait_ms / 1000, on_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        result = await manager.reload()
        if result.outcome != "loaded":
            logger.warning("started without a model (%s): %s", result.outcome, result.detail)
        poller = None
        if config.poll_interval_s > 0:
            poller = asyncio.create_task(manager.poll(config.poll_interval_s))
        yield
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await batcher.stop()  # uvicorn has drained the connections; finish queued work

    app = FastAPI(
        title="Flight delay predictions",
        description=(
            "The probability that a flight from New York arrives more than 15 minutes late, "
            "from what is known at its scheduled departure. Served from ONNX by onnxruntime; "
            "features computed by the same transform that built the training table."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, error: NotReadyError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(ScoringError)
    async def scoring_failed(request: Request, error: ScoringError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 500)

    PredictRequest = predict_request(config.max_request_rows)  # noqa: N806 (a class)
    unavailable = {503: {"model": ErrorResponse, "description": "no model loaded yet"}}
    too_large = {413: {"model": ErrorResponse, "description": "the body is over the limit"}}
    body_errors = {**too_large, **unavailable}

    predict_schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    app.state.predict_defs = predict_schema.pop("$defs", {})  # Flight: added to components below

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={422: VALIDATION_ERROR, **body_errors},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": predict_schema}},
            }
        },
    )
    async def predict(request: Request) -> JSONResponse:
        """One prediction per flight, in order; unknown values fall back to training defaults."""
        # pydantic-core parses and validates the bytes in one pass: the same model and the
        # same 422s as FastAPI's body parameter, without its generic dependency machinery
        try:
            body = PredictRequest.model_validate_json(await request.body())
        except ValidationError as error:
            detail = [{**e, "loc": ["body", *e["loc"]]} for e in error.errors(include_url=False)]
            return JSONResponse({"detail": jsonable_encoder(detail)}, 422)
        rows = [{name: getattr(flight, name) for name in RAW_INPUTS} for flight in body.flights]
        answer = await batcher.score(rows)
        return JSONResponse({"predictions": _predictions(answer), "model": _model_ref(answer)})

    @app.post(
        "/invocations",
        responses={400: {"description": "MLflow-style error"}, **body_errors},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object"},
                        "example": {
                            "dataframe_split": {
                                "columns": [
                                    "carrier",
                                    "flight",
                                    "origin",
                                    "dest",
                                    "scheduled_departure",
                                ],
                                "data": [["UA", 1545, "EWR", "IAH", "2013-12-01T05:15:00"]],
                            }
                        },
                    }
                },
            }
        },
    )
    async def invocations(request: Request) -> JSONResponse:
        """MLflow's scoring protocol (`dataframe_split` or `dataframe_records`)."""
        try:
            rows = from_invocations(json.loads(await request.body()), config.max_request_rows)
        except json.JSONDecodeError as error:
            return _mlflow_error(f"body: not JSON ({error.msg})")
        except InvalidInputError as error:
            return _mlflow_error(str(error))
        answer = await batcher.score(rows)
        return JSONResponse({"predictions": _predictions(answer), "model": _model_ref(answer)})

    @app.get("/model", responses=unavailable)
    async def model_info() -> JSONResponse:
        """The served model: version, source, checksums, threshold, and the last reload."""
        model = slot.current
        if model is None:
            raise NotReadyError("no model is loaded yet")
        last = manager.last_result
        return JSONResponse(
            {
                "name": model.name,
                "version": model.version,
                "source": model.bundle.source,
                "loaded_at": model.loaded_at.isoformat(),
                "onnx_sha256": model.bundle.metadata.get("onnx_sha256"),
                "feature_spec_sha256": model.bundle.metadata.get("feature_spec_sha256"),
                "decision_threshold": model.threshold,
                "providers": model.session.get_providers(),
                "inputs": RAW_INPUTS,
                "train_months": model.spec.splits["train"].months,
                "last_reload": None if last is None else last.__dict__,
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        responses={
            401: {"model": ErrorResponse, "description": "no or wrong token"},
            403: {"model": ErrorResponse, "description": "admin endpoints are disabled"},
            409: {"model": ReloadResponse, "description": "the new version was refused"},
            **body_errors,
        },
    )
    async def admin_reload(
        body: ReloadRequest | None = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Check the source now and swap in a new version (Authorization: Bearer <token>)."""
        if not config.admin_token:
            return JSONResponse({"detail": "admin endpoints are disabled: no token is set"}, 403)
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token.encode(), config.admin_token.encode()):
            return JSONResponse({"detail": "authorization: a valid bearer token is required"}, 401)
        result = await manager.reload(force=body.force if body else False)
        status = {"refused": 409, "unavailable": 503}.get(result.outcome, 200)
        return JSONResponse(result.__dict__, status)

    _add_v2(app, slot, batcher, config, body_errors)
    _with_components(app, app.state.predict_defs)
    return app


def _with_components(app: FastAPI, schemas: dict) -> None:
    """Put the models that only hand-declared request bodies use into the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = original()
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi


def _mlflow_error(message: str) -> JSONResponse:
    return JSONResponse({"error_code": "BAD_REQUEST", "message": message}, 400)


def _add_v2(
    app: FastAPI, slot: ModelSlot, batcher: MicroBatcher, config: ServeConfig, errors: dict
) -> None:
    """The Open Inference Protocol (KServe V2) over the same batcher."""

    def served(name: str):
        model = slot.current
        if model is None:
            raise NotReadyError("no model is loaded yet")
        if name != model.name:
            raise HTTPException(404, f"model {name!r} is not served here; {model.name!r} is")
        return model

    @app.get("/v2", tags=["v2"])
    async def v2_server() -> dict:
        return {"name": "mlops-flights", "version": "0.1.0", "extensions": []}

    @app.get("/v2/health/live", tags=["v2"])
    async def v2_live() -> dict:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        tags=["v2"],
        responses={503: {"description": "not ready: no model loaded yet"}},
    )
    async def v2_ready() -> JSONResponse:
        ready = slot.current is not None
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    unknown = {404: {"model": ErrorResponse, "description": "no such model here"}}
    not_ready = {503: errors[503]}

    @app.get("/v2/models/{name}", tags=["v2"], responses={**unknown, **not_ready})
    async def v2_metadata(name: str) -> dict:
        model = served(name)
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": field, "datatype": datatype, "shape": [-1]}
                for field, datatype in V2_INPUTS.items()
            ],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}],
        }

    @app.get("/v2/models/{name}/ready", tags=["v2"], responses={**unknown, **not_ready})
    async def v2_model_ready(name: str) -> dict:
        served(name)
        return {"name": name, "ready": True}

    request_schema = V2InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request_schema.pop("$defs", None)  # V2Tensor is in the components through the response

    @app.post(
        "/v2/models/{name}/infer",
        response_model=V2InferResponse,
        responses={400: {"description": "V2 error: {'error': message}"}, **unknown, **errors},
        tags=["v2"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema}},
            }
        },
    )
    async def v2_infer(name: str, request: Request) -> JSONResponse:
        """Named 1-D tensors, one per raw field; JSON or the binary tensor extension."""
        served(name)
        header = request.headers.get("inference-header-content-length")
        try:
            body = parse_v2(await request.body(), int(header) if header else None)
            rows = from_v2(body, config.max_request_rows)
        except InvalidInputError as error:
            return JSONResponse({"error": str(error)}, 400)
        answer = await batcher.score(rows)
        return JSONResponse(
            {
                "model_name": answer.model.name,
                "model_version": answer.model.version,
                "id": body.id,
                "outputs": [
                    {
                        "name": OUTPUT,
                        "shape": [len(answer.probabilities)],
                        "datatype": "FP32",
                        "data": answer.probabilities.tolist(),
                    }
                ],
            }
        )
