"""Screenshots of MLflow's UI as a new user sees it after `make run`, taken by a real browser.

Builds the real feature table in a temporary MLOPS_HOME, runs a two-trial study and a small
training run through the project's own code, promotes it, starts `mlflow ui` on that store and
drives headless Chromium (Debian's `chromium` package) over the DevTools protocol, each page in
a fresh profile so that nothing a past visit chose shows through:

    python docs/mlflow_screenshots.py                # docs/mlflow_{experiment,run,model}.png
    python docs/mlflow_screenshots.py --home .mlops  # the store `make run` left instead
    python docs/mlflow_screenshots.py --keep         # and leave the store and the UI running

It needs `chromium` (apt-get install chromium) and `websockets` (with uvicorn[standard]).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout


from pipelines.features import build_features_pandas  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.layout import DataLayout  # noqa: E402
from pipelines.splits import SplitPlan  # noqa: E402
from pipelines.storage import read_parquet_folder  # noqa: E402
from training.config import GateConfig, ModelConfig, TrackingConfig  # noqa: E402
from training.fit import FitConfig  # noqa: E402
from training.registry import promote  # noqa: E402
from training.tracking import (  # noqa: E402
    experiment_id,
    experiment_page,
)
from training.train import train  # noqa: E402
from training.tune import TuneConfig, tune  # noqa: E402

logger = logging.getLogger("mlflow_screenshots")

MODEL_TRAINING_VIEW = "workflowType=machine_learning"  # the sidebar of model training, not GenAI
CLOSE_ASSISTANT = 'button[aria-label="Close"]'  # the chat panel that takes a quarter of the page
MAX_BYTES = 300_000  # the screenshots live in the repository
# The architecture a CLI run trains, small enough for a minute on a laptop's CPU.
MODEL = ModelConfig(backbone="mlp", numeric_embedding="periodic", width=64, depth=2)
FIT = FitConfig(epochs=3, batch_size=4096)
STUDY = TuneConfig(trials=2, epochs=1)


def build_store(home: Path) -> None:
    """What `make run` leaves, in little: features, a study, a trained and promoted model."""
    layout = DataLayout(home)
    logger.info("ingesting the bundled data and building features in %s", home)
    ingest(layout)
    build_features_pandas(layout, SplitPlan())
    tracking = TrackingConfig(home)
    logger.info("tuning: %d trials of %d epoch", STUDY.trials, STUDY.epochs)
    tune(layout, tracking, STUDY, FIT)
    logger.info("training %s", MODEL)
    result = train(layout, tracking, MODEL, FIT)
    if result is None:
        raise RuntimeError("training returned no run")
    holdout = read_parquet_folder(layout.split("test"))
    promote(tracking.client(), result.run_id, holdout, GateConfig())


def locate(home: Path, gate: GateConfig) -> tuple[str, str]:
    """(experiment id, the champion's run id) in `home`'s store."""
    tracking = TrackingConfig(home)
    client = tracking.client()
    champion = client.get_model_version_by_alias(gate.model_name, gate.alias)
    return experiment_id(client, tracking), champion.run_id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(home: Path, port: int) -> subprocess.Popen:
    store = TrackingConfig(home).resolved_uri
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise RuntimeError(f"mlflow ui did not answer on port {port}")


class Browser:
    """Headless Chromium with a fresh profile, driven over the DevTools protocol."""

    def __init__(self, executable: str, width: int, height: int) -> None:
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        command = [
            executable,
            "--headless",
            "--no-sandbox",  # containers run it as root
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={self._profile.name}",
            f"--window-size={width},{height}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        self._process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self._ids = itertools.count(1)
        self._closing = contextlib.ExitStack()
        self._socket = self._closing.enter_context(self._connect())

    def _connect(self):
        from websockets.sync.client import connect

        assert self._process.stderr is not None
        for line in self._process.stderr:
            if match := re.search(r"DevTools listening on ws://[^/]+:(\d+)/", line):
                break
        else:
            raise RuntimeError("chromium exited before it opened its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/json/list") as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        return connect(page["webSocketDebuggerUrl"], max_size=None)

    def call(self, method: str, **params: object) -> dict:
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def open(self, url: str, showing: str, timeout: float = 60) -> None:
        """Load `url` and wait until the page's text shows `showing` (the app renders late)."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"document.body.innerText.includes({json.dumps(showing)})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never showed {showing!r}")
            time.sleep(0.5)
        time.sleep(2)  # tables and Markdown settle

    def click(self, selector: str) -> None:
        """Press what `selector` matches, if anything does (the UI's markup varies by release)."""
        self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).forEach(e => e.click())")
        time.sleep(1)

    def widen_column(self, header: str, pixels: int) -> None:
        """Drag the resize handle of the table column headed `header`."""
        found = self.evaluate(
            "(() => { const cell = [...document.querySelectorAll('.ag-header-cell')]"
            f".find(c => c.innerText.trim() === {json.dumps(header)});"
            " const handle = cell && cell.querySelector('.ag-header-cell-resize');"
            " if (!handle) return null; const box = handle.getBoundingClientRect();"
            " return [box.x + 2, box.y + box.height / 2]; })()"  # inside this column
        )
        if not found:
            return
        x, y = found
        self._mouse("mousePressed", x, y, buttons=1)
        for step in range(1, 11):  # in steps, as a hand would: the grid follows mouse moves
            self._mouse("mouseMoved", x + pixels * step / 10, y, buttons=1)
        self._mouse("mouseReleased", x + pixels, y, buttons=0)
        time.sleep(1)

    def _mouse(self, kind: str, x: float, y: float, buttons: int) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons)

    def screenshot(self, target: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        target.write_bytes(base64.b64decode(data))
        shrink(target)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            self._socket.send(json.dumps({"id": 0, "method": "Browser.close"}))
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.terminate()
            self._process.wait(timeout=30)
        self._closing.close()
        self._profile.cleanup()


def shrink(path: Path) -> None:
    """A palette suits UI screenshots; scale down only if that is not enough."""
    image = Image.open(path).convert("RGB")
    while True:
        image.quantize(colors=128).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES or image.width < 700:
            return
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)


def capture(server: str, home: Path, output: Path, executable: str) -> None:
    gate = GateConfig()
    experiment, run_id = locate(home, gate)
    run_name = TrackingConfig(home).client().get_run(run_id).info.run_name
    landing = experiment_page(server, experiment)  # the address `mlops run` prints
    with Browser(executable, 1400, 700) as browser:
        browser.open(landing, showing=run_name)
        browser.click(CLOSE_ASSISTANT)
        browser.click('[data-component-id="mlflow.experiment.metadata_editor.expand_button"]')
        browser.click('[data-component-id$="runnamecellrenderer.tsx_46"]')  # a study's trials
        browser.widen_column("Run Name", 120)
        browser.screenshot(output / "mlflow_experiment.png")
    with Browser(executable, 1400, 1100) as browser:
        run_page = f"{server}/#/experiments/{experiment}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
        browser.open(run_page, showing="Description")
        browser.click(CLOSE_ASSISTANT)
        browser.click('button[aria-label="Expand description"]')
        browser.screenshot(output / "mlflow_run.png")
    with Browser(executable, 1400, 700) as browser:
        browser.open(
            f"{server}/#/models/{gate.model_name}?{MODEL_TRAINING_VIEW}", showing="Versions"
        )
        browser.click(CLOSE_ASSISTANT)
        browser.screenshot(output / "mlflow_model.png")
    for name in ("mlflow_experiment.png", "mlflow_run.png", "mlflow_model.png"):
        logger.info("%s (%d KB)", output / name, (output / name).stat().st_size // 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="an MLOPS_HOME with a champion already")
    parser.add_argument("--output", type=Path, default=ROOT / "docs")
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--keep", action="store_true", help="leave the store and the UI running")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    home = args.home or Path(tempfile.mkdtemp(prefix="mlflow-screenshots-"))
    if args.home is None:
        build_store(home)
    port = free_port()
    server = start_ui(home, port)
    try:
        capture(f"http://127.0.0.1:{port}", home, args.output, args.browser)
    finally:
        if args.keep:
            logger.info("store %s, UI http://127.0.0.1:%d (pid %d)", home, port, server.pid)
        else:
            server.terminate()
            server.wait(timeout=30)
            if args.home is None:
                shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
