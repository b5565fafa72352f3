"""Regenerate the README's pictures from a real run: `make figures` (a few minutes on 2 cores).

Ingests the bundled data into a temporary home, builds the features, trains the default
network briefly, and writes docs/delay_by_hour.png, docs/roc.png and docs/psi.png with the
same plotting functions the training runs and the notebook use.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.settings import Settings  # noqa: E402
from pipelines.features import build_features_pandas  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.layout import DataLayout  # noqa: E402
from pipelines.spec import LABEL, FeatureSpec, encode  # noqa: E402
from pipelines.splits import SplitPlan  # noqa: E402
from pipelines.storage import read_parquet_folder  # noqa: E402
from serving.drift import DriftMonitor  # noqa: E402
from training import plots  # noqa: E402
from training.fit import fit, predict_logits  # noqa: E402
from training.metrics import roc_auc, sigmoid  # noqa: E402
from training.model import TabularNet  # noqa: E402
from training.tensors import pick_device, to_tensors  # noqa: E402


def main(out: Path = ROOT / "docs", epochs: int = 4) -> None:
    home = Path(tempfile.mkdtemp(prefix="mlops-figures-"))
    layout = DataLayout(home)
    ingest(layout)
    build_features_pandas(layout, SplitPlan())

    flights = read_parquet_folder(layout.bronze("flights"))
    flights = flights[flights["arr_delay"].notna()]
    hour = flights["scheduled_departure"].dt.hour
    rates = (flights["arr_delay"] > 15).groupby(hour).agg(["mean", "size"])
    figure = plots.draw_delay_rate(rates.index, rates["mean"], rates["size"], "hour")
    plots.save_png(figure, out / "delay_by_hour.png")

    settings = Settings(_env_file=None)
    spec = FeatureSpec.load(layout.spec)
    device = pick_device()
    tables = {s: read_parquet_folder(layout.split(s)) for s in ("train", "valid", "test")}
    data = {s: to_tensors(t, spec, device) for s, t in tables.items()}
    model = TabularNet(spec, settings.model).to(device)
    fit(
        model,
        data["train"],
        data["valid"],
        replace(settings.fit, epochs=epochs),
    )
    labels = tables["test"][LABEL].to_numpy()
    probabilities = sigmoid(predict_logits(model, data["test"]).cpu().numpy())
    figure = plots.draw_roc(labels, probabilities, roc_auc(labels, probabilities))
    plots.save_png(figure, out / "roc.png")

    encoded = encode(tables["test"], spec)
    monitor = DriftMonitor(spec, window_rows=len(tables["test"]))
    monitor.update(encoded.numerical, encoded.defaults_used)
    psi = monitor.report()
    figure = plots.draw_psi(list(psi), list(psi.values()), "PSI of Nov-Dec vs Jan-Sep", top=15)
    plots.save_png(figure, out / "psi.png")


if __name__ == "__main__":
    main()
