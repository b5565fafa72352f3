"""The FastAPI app: /predict, MLflow's /invocations, the Open Inference Protocol (V2), /model,
/metrics and /admin/reload, over one micro-batcher and a hot-swappable model slot.

`create_app(config, source)` is the factory, and only wiring: the shared state, its lifespan,
the middlewares and the routers (`serving.routes`, where status codes are chosen).
`mlops serve` builds the config and the source from the settings.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from serving.admission import Admission, EdgeAdmission
from serving.config import (
    CONFIG_STATE_KEY,
    EDGE_STATE_KEY,
    EventsConfig,
    PredictionLogConfig,
    ServeConfig,
)
from serving.manager import Source
from serving.middleware import BodyLimit, RequestMetrics
from serving.routes import admin, invocations, metrics, predict, v2
from serving.routes import events as event_routes
from serving.routes.openapi import with_components
from serving.routes.responses import EXCEPTION_HANDLERS
from serving.schemas import V2InferRequest, predict_request
from serving.state import ServingState

# FastAPI's OpenTelemetry bridge (0.16x) asks the global providers on every request whether
# one was configured since (three lookups of the environment, 3% of a /predict of one flight):
# off, since this server's telemetry is Prometheus (/metrics); older FastAPI has no bridge.
NO_OPENTELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)

DESCRIPTION = (
    "The probability that a flight from New York arrives more than 15 minutes late, "
    "from what is known at its scheduled departure. Served from ONNX by onnxruntime; "
    "features computed by the same transform that built the training table."
)


def create_app(
    config: ServeConfig,
    source: Source,
    events: EventsConfig | None = None,
    predictions: PredictionLogConfig | None = None,
) -> FastAPI:
    """`events`: the online store's (off without a token; in memory without a folder);
    `predictions`: the prediction log's (off without a folder)."""
    state = ServingState.build(
        config, source, events or EventsConfig(), predictions or PredictionLogConfig()
    )
    request_model = predict_request(config.max_request_rows)
    routers = [
        predict.router(request_model),
        invocations.router,
        admin.router,
        event_routes.router(config.max_request_rows),
        metrics.router,
        v2.router,
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        async with state.running():
            # the server's side reads them (serving.connection)
            yield {
                CONFIG_STATE_KEY: config,
                EDGE_STATE_KEY: EdgeAdmission(state.batcher, state.metrics),
            }

    app = FastAPI(
        title="Flight delay predictions",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        # The routers' routes sit flat on the app's router: FastAPI (0.16x) matches the routes
        # of an included router twice per request, about 8 µs, 6% of a /predict. Routes made
        # on a module's router are out of reach of app.dependency_overrides; tests give the
        # factory a config and a model source instead.
        routes=[route for router in routers for route in router.routes],
        **NO_OPENTELEMETRY,
    )
    app.state.serving = state  # the one way routes reach it: serving.routes.deps
    # The last added is the outermost: a declared oversize body is refused before the app sees
    # it, and counted (as endpoint "unmatched": it never reached the router).
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Admission, batcher=state.batcher)  # refuses before the body is read
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outermost: counts every answer
    with_components(app, request_model, V2InferRequest)  # the models of hand-declared bodies
    return app
