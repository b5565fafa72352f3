"""`mlops train`: one tracked training run on the current feature table."""

from __future__ import annotations

from typing import Annotated

import typer

from mlops.cli import app, console, fail
from mlops.flows import layout_of, progress_bar
from mlops.settings import Settings
from pipelines.errors import PipelineError


@app.command("train")
def train_command(
    ctx: typer.Context,
    epochs: Annotated[int | None, typer.Option(min=1, help="at most this many epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Train the network on the feature table, tracked in MLflow."""
    from training.distributed import process_group
    from training.fit import EpochResult, FitConfig
    from training.model import ModelConfig
    from training.tracking import TrackingConfig
    from training.train import train

    settings: Settings = ctx.obj
    layout = layout_of(settings)
    if not layout.spec.exists():
        raise fail(
            PipelineError(f"no feature spec at {layout.spec}: run `mlops data features` first")
        )
    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
    }
    fit_config = FitConfig(
        **(settings.fit.model_dump() | {k: v for k, v in overrides.items() if v is not None})
    )
    tracking = TrackingConfig(settings.home, settings.mlflow_tracking_uri, settings.experiment)
    with process_group() as rank, progress_bar(console, disable=rank != 0) as progress:
        bar = progress.add_task("training", total=fit_config.epochs)

        def advance(epoch: EpochResult) -> None:
            progress.update(
                bar,
                advance=1,
                description=f"training: valid loss {epoch.valid_loss:.4f}, "
                f"{epoch.samples_per_s:,.0f} samples/s",
            )

        result = train(
            layout, tracking, ModelConfig(**settings.model.model_dump()), fit_config, advance
        )
    if result is None:  # a helper rank under torchrun: rank 0 reports
        return
    for name, value in result.metrics.items():
        console.print(
            f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}"
        )
    console.print(f"MLflow run {result.run_id} in {tracking.resolved_uri}")
    console.print(f"see it with: mlflow ui --backend-store-uri {tracking.resolved_uri}")
