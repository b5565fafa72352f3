"""Regenerate the README's pictures from a real run: `make figures` (about 15 minutes on 2
cores).

Ingests the bundled data into a temporary home, builds the features, trains the default
network briefly, and writes docs/delay_by_hour.png, docs/roc.png and docs/psi.png with the
same plotting functions the training runs and the notebook use. Then docs/realized.png, the
served model's realized quality per day: the CLI as a user runs it (`mlops train`, `promote`,
`export`), `mlops serve` with events on, `mlops replay` of November as live events, and
`mlops monitor --figure` from the prediction log and the arrivals the server wrote.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.settings import Settings  # noqa: E402
from pipelines.features import build_features_pandas  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.layout import DataLayout  # noqa: E402
from pipelines.metrics import roc_auc  # noqa: E402
from pipelines.spec import LABEL, FeatureSpec, encode  # noqa: E402
from pipelines.splits import SplitPlan  # noqa: E402
from pipelines.storage import read_parquet_folder  # noqa: E402
from serving.drift import DriftMonitor  # noqa: E402
from training import plots  # noqa: E402
from training.fit import fit, predict_logits  # noqa: E402
from training.metrics import sigmoid  # noqa: E402
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
    realized_quality(home, out)


def realized_quality(home: Path, out: Path) -> None:
    """docs/realized.png: a champion trained on `home`'s features, served to a replay of
    November, its realized quality drawn by `mlops monitor` from its prediction log."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
    env = keep | {
        "MLOPS_HOME": str(home),
        "MLOPS_FIT__EPOCHS": "2",
        "MLOPS_EVENTS__TOKEN": "make-figures",
        "MLOPS_EVENTS__SINCE": "2013-11-01T00:00",
    }

    def mlops(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "mlops", *args], env=env, check=True)

    mlops("train")
    mlops("promote")
    mlops("export", "--output", str(home / "model"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = str(home / "model")
    serve = [sys.executable, "-m", "mlops", "serve", "--model-dir", model, "--port", str(port)]
    server = subprocess.Popen(serve, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not become ready") from None
                time.sleep(1)
        november = ["--since", "2013-11", "--until", "2013-11"]
        mlops("replay", *november, "--url", f"http://127.0.0.1:{port}")
    finally:
        server.send_signal(signal.SIGTERM)  # a clean stop writes the whole log
        server.wait(timeout=120)
    mlops("monitor", "--no-track", "--figure", str(out / "realized.png"))


if __name__ == "__main__":
    main()
