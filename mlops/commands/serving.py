"""`mlops serve`, `mlops export` and `mlops predict`: the model out of the registry."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from mlops.configs import model_source
from mlops.console import Bars, console
from mlops.logs import service_config, service_logging
from mlops.settings import Settings

logger = logging.getLogger(__name__)

ModelDirOption = Annotated[
    Path | None, typer.Option(help="a local model folder instead of the registry's champion")
]


def serve_command(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default 8000")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="uvicorn worker processes")] = None,
    model_dir: ModelDirOption = None,
    access_log: Annotated[
        bool, typer.Option(help="log every request (the metrics count them anyway)")
    ] = False,
) -> None:
    """Serve the champion over HTTP: /predict, /invocations, /v2, /metrics, /docs."""
    import uvicorn

    settings: Settings = ctx.obj
    service_logging(settings)  # first: the libraries read their switches when imported
    from serving.connection import HTTP_PROTOCOL  # imports onnxruntime

    serve = settings.serve
    workers = workers or serve.workers
    # uvicorn's workers build the app from the environment: hand the effective settings over
    os.environ["MLOPS_HOME"] = str(settings.home.resolve())
    os.environ["MLOPS_SERVE__WORKERS"] = str(workers)
    if model_dir is not None:
        os.environ["MLOPS_SERVE__MODEL_DIR"] = str(model_dir.resolve())
    # uvicorn stops gracefully on SIGTERM, then raises it again once it has stopped, which
    # would end this process with 143 after a clean stop; the handler it restores exits 0
    signal.signal(signal.SIGTERM, _exit_cleanly)
    source = model_dir or model_source(settings).describe()
    where = f"serving {source} on http://{host or serve.host}:{port or serve.port} (docs at /docs)"
    if settings.log_format == "json":  # one JSON object per line, this line included
        logger.info(where)  # configured by the CLI callback, as every service's
    else:
        console.print(where)
    uvicorn.run(
        "mlops.serve_app:create",
        factory=True,
        host=host or serve.host,
        port=port or serve.port,
        workers=workers,
        http=HTTP_PROTOCOL,  # bounds the request head's size and time (serving.connection)
        log_config=service_config(settings.log_format, settings.log_level),
        access_log=access_log,
        # in-flight requests get this long after SIGTERM; the container's grace is longer
        timeout_graceful_shutdown=serve.graceful_shutdown_s,
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def export_command(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option(help="the model folder to write")],
    version: Annotated[str | None, typer.Option(help="default: the champion")] = None,
) -> None:
    """Write a registered model (ONNX, metadata, feature contract) as a local model folder."""
    from mlops.flows.export import export_model

    bundle = export_model(ctx.obj, output, version)
    console.print(f"{bundle.name} v{bundle.version} -> {output} (serve it with --model-dir)")


def predict_command(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Option("--input", help="CSV/Parquet file or folder")],
    output: Annotated[Path, typer.Option(help="a folder of Parquet parts (replaced whole)")],
    model_dir: ModelDirOption = None,
) -> None:
    """Batch scoring with Dask through the served model and transform (the offline path)."""
    from mlops.flows.predict import predict

    report = predict(ctx.obj, Bars(), input_path, output, model_dir)
    console.print(
        f"{report.scored:,} flights scored, {report.rejected:,} rejected (with their reason "
        f"under {report.output / 'rejected'}), {report.partitions} partitions -> {report.output}"
    )
