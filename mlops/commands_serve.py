"""`mlops serve`, `mlops export` and `mlops predict`: the model out of the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlops.cli import app, console, fail
from mlops.flows import cluster_of, progress_bar, tracking_of
from mlops.serve_app import source_of
from mlops.settings import Settings
from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from serving.bundle import Bundle


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default 8000")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="uvicorn worker processes")] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="a local model folder instead of the registry's champion")
    ] = None,
    access_log: Annotated[
        bool, typer.Option(help="log every request (the metrics count them anyway)")
    ] = False,
) -> None:
    """Serve the champion over HTTP: /predict, /invocations, /v2, /metrics, /docs."""
    import uvicorn

    settings: Settings = ctx.obj
    serve = settings.serve
    workers = workers or serve.workers
    # uvicorn's workers build the app from the environment: hand the effective settings over
    os.environ["MLOPS_HOME"] = str(settings.home)
    os.environ["MLOPS_SERVE__WORKERS"] = str(workers)
    if model_dir is not None:
        os.environ["MLOPS_SERVE__MODEL_DIR"] = str(model_dir.resolve())
    if settings.mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    console.print(
        f"serving {model_dir or source_of(settings).describe()} on "
        f"http://{host or serve.host}:{port or serve.port} (docs at /docs)"
    )
    uvicorn.run(
        "mlops.serve_app:create",
        factory=True,
        host=host or serve.host,
        port=port or serve.port,
        workers=workers,
        log_level="info",
        access_log=access_log,
        timeout_graceful_shutdown=30,
    )


def _champion_bundle(settings: Settings, version: str | None) -> Bundle:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from serving.bundle import download_version

    gate = settings.gate
    uri = tracking_of(settings).resolved_uri
    client = MlflowClient(uri)
    try:
        found = (
            client.get_model_version(gate.model_name, version)
            if version
            else client.get_model_version_by_alias(gate.model_name, gate.alias)
        )
    except MlflowException as error:
        what = f"version {version}" if version else f"alias {gate.alias!r}"
        raise PipelineError(f"no {what} of model {gate.model_name!r} in {uri}") from error
    return download_version(
        gate.model_name,
        str(found.version),
        str(found.run_id),
        settings.home / "serving" / "models",
        uri,
    )


@app.command("export")
def export_command(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option(help="the model folder to write")],
    version: Annotated[str | None, typer.Option(help="default: the champion")] = None,
) -> None:
    """Write a registered model (ONNX, metadata, feature contract) as a local model folder."""
    import shutil

    from serving.bundle import verify

    try:
        bundle = _champion_bundle(ctx.obj, version)
    except PipelineError as error:
        raise fail(error) from error
    verify(bundle)
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(bundle.folder, output)
    console.print(f"{bundle.name} v{bundle.version} -> {output} (serve it with --model-dir)")


@app.command("predict")
def predict_command(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Option("--input", help="CSV/Parquet file or folder")],
    output: Annotated[Path, typer.Option(help="a folder of Parquet parts (replaced whole)")],
    model_dir: Annotated[
        Path | None, typer.Option(help="a local model folder instead of the champion")
    ] = None,
) -> None:
    """Batch scoring with Dask through the served model and transform (the offline path)."""
    from mlops.scoring import predict_table
    from pipelines.cluster import dask_client
    from serving.bundle import read_bundle, verify

    settings: Settings = ctx.obj
    try:
        bundle = read_bundle(model_dir) if model_dir else _champion_bundle(settings, None)
        verify(bundle)
        with dask_client(cluster_of(settings)), progress_bar(console) as progress:
            progress.add_task(f"scoring with {bundle.name} v{bundle.version}", total=None)
            report = predict_table(input_path, output, bundle.folder)
    except (PipelineError, FileNotFoundError) as error:
        raise fail(error) from error
    console.print(
        f"{report.scored:,} flights scored, {report.rejected:,} rejected (with their reason "
        f"under {report.output / 'rejected'}), {report.partitions} partitions -> {report.output}"
    )
