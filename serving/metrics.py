"""Prometheus metrics of one server process, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serving.drift import DriftMonitor

if TYPE_CHECKING:
    from pipelines.online import Applied
    from serving.quality import RealizedQuality
    from serving.runtime import Scored

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)

# why the batcher refused a scoring request (serving/batcher.py)
SHED_REASONS = ("queue_full", "loop_lag", "deadline")


class _DriftCollector:
    """PSI per feature, computed from the monitor's window when scraped."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        family = GaugeMetricFamily(
            "mlops_feature_psi",
            "PSI of each numerical input over the served window against training",
            labels=["feature"],
        )
        monitor = self.metrics.drift()
        if monitor is not None:
            for feature, value in monitor.report().items():
                family.add_metric([feature], value)
        yield family
        output = GaugeMetricFamily(
            "mlops_output_psi",
            "PSI of the predicted probability over the served window against the model's "
            "holdout (absent for a model trained before its holdout's were recorded)",
        )
        value = None if monitor is None else monitor.output_psi()
        if value is not None:
            output.add_metric([], value)
        yield output
        rows = GaugeMetricFamily("mlops_drift_window_rows", "Rows in the drift window")
        rows.add_metric([], monitor.rows if monitor is not None else 0)
        yield rows


class _QualityCollector:
    """Realized quality per model version and window, computed when scraped."""

    FIGURES = (
        ("roc_auc", "ROC-AUC"),
        ("log_loss", "log loss"),
        ("mean_probability", "mean predicted probability (calibration: against delay_rate)"),
        ("delay_rate", "observed delay rate"),
        ("predictions", "number of matured predictions (one per version and flight)"),
    )

    def __init__(self, quality: RealizedQuality) -> None:
        self.quality = quality

    def collect(self):
        report = self.quality.report()
        for figure, what in self.FIGURES:
            family = GaugeMetricFamily(
                f"mlops_realized_{figure}",
                f"Realized {what} of the predictions whose flights landed in the window (event "
                "time, ending at the newest arrival)",
                labels=["version", "window"],
            )
            for realized in report:
                family.add_metric([realized.version, realized.window], getattr(realized, figure))
            yield family
        matured = CounterMetricFamily(
            "mlops_matured_predictions",
            "Predictions joined with their flight's arrival, per version (one per flight)",
            labels=["version"],
        )
        for version, count in sorted(self.quality.matured_total.items()):
            matured.add_metric([version], count)
        yield matured
        newest = GaugeMetricFamily(
            "mlops_realized_newest_arrival_minutes",
            "The newest arrival joined, minutes since the epoch on New York's clock",
        )
        if self.quality.newest > float("-inf"):
            newest.add_metric([], self.quality.newest)
        yield newest
        waiting = GaugeMetricFamily(
            "mlops_realized_waiting_flights", "Flights predicted whose arrival has not come yet"
        )
        waiting.add_metric([], self.quality.waiting)
        yield waiting
        evicted = CounterMetricFamily(
            "mlops_realized_evicted_flights",
            "Flights predicted and dropped before their arrival came (past the bound)",
        )
        evicted.add_metric([], self.quality.evicted)
        yield evicted


class ServingMetrics:
    def __init__(self, drift: Callable[[], DriftMonitor | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        self.drift = drift  # the served model's monitor, read when scraped
        self.requests = Counter(
            "mlops_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_request_seconds",
            "Request latency by endpoint and status",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "mlops_batch_rows",
            "Rows per onnxruntime call (micro-batches)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "mlops_batch_seconds",
            "Transform + encode + onnxruntime time per micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows_scored = Counter("mlops_rows_scored", "Flights scored", registry=self.registry)
        self.shed = Counter(
            "mlops_shed_requests",
            "Scoring requests refused with a 503 by backpressure: queue_full or loop_lag when "
            "they arrived (before the app, so not in mlops_requests), deadline when taken off "
            "the queue",
            ["reason"],
            registry=self.registry,
        )
        self.events = self._outcomes(
            "mlops_events",
            "Events sent to POST /v1/events: accepted, duplicate (an id already applied) or "
            "refused (quarantined with its reason)",
            ("accepted", "duplicate", "refused"),
        )
        self.events_newest = Gauge(
            "mlops_events_newest_minutes",
            "The observed time of each source's newest event, minutes since the epoch on New "
            "York's clock (how fresh the online features are)",
            ["source"],
            registry=self.registry,
        )
        self.events_applied_at = Gauge(
            "mlops_events_last_applied_timestamp_seconds",
            "When this worker's online store last applied an event (wall clock; 0: never): "
            "how fresh the feed is, whatever the events' own times",
            registry=self.registry,
        )
        self.prediction_log = self._outcomes(
            "mlops_prediction_log_rows",
            "Predictions for the prediction log: written, dropped (the disk behind) or failed "
            "(a write that failed)",
            ("written", "dropped", "failed"),
        )
        self._shed_children = {reason: self.shed.labels(reason) for reason in SHED_REASONS}
        self.queue_wait = Histogram(
            "mlops_queue_wait_seconds",
            "From arrival to the batcher, of the oldest request of each micro-batch (requests "
            "that would wait past the deadline are refused instead)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queued_rows = Gauge(
            "mlops_queue_rows", "Flights waiting to be scored", registry=self.registry
        )
        self.queued_requests = Gauge(
            "mlops_queue_requests", "Requests waiting to be scored", registry=self.registry
        )
        self.model_info = Gauge(
            "mlops_model_info",
            "The loaded model (1 for the one being served)",
            ["name", "version"],
            registry=self.registry,
        )
        self.holdout = Gauge(
            "mlops_model_holdout",
            "The served model's figures on its holdout at training (roc_auc, log_loss, "
            "mean_probability, delay_rate, rows): what mlops_realized_* is held against",
            ["version", "figure"],
            registry=self.registry,
        )
        self.ready = Gauge("mlops_model_ready", "1 when a model is served", registry=self.registry)
        self.reloads = Counter(
            "mlops_model_reloads",
            "Model reload attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.problem_since = Gauge(
            "mlops_model_problem_since_timestamp_seconds",
            "Since when a new model could not be loaded for a transient fault (MLflow "
            "unreachable, a download failed), retried with backoff; 0 when none",
            registry=self.registry,
        )
        self.last_refusal = Gauge(
            "mlops_model_last_refusal_timestamp_seconds",
            "When a model version was last refused",
            registry=self.registry,
        )
        self.registry.register(_DriftCollector(self))
        # labels() takes a lock and builds a key per call: the request path keeps the children
        self._request_children: dict[tuple[str, str, int], tuple] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency under its endpoint, method and status."""
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(endpoint, method, str(status)),
                self.latency.labels(endpoint, str(status)),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def _outcomes(self, name: str, documentation: str, outcomes: tuple[str, ...]) -> Counter:
        """A counter by `outcome`, each at 0 from the start (a rate() from the first scrape)."""
        counter = Counter(name, documentation, ["outcome"], registry=self.registry)
        for outcome in outcomes:
            counter.labels(outcome)
        return counter

    def watch_quality(self, quality: RealizedQuality) -> None:
        self.registry.register(_QualityCollector(quality))

    def observe_logged(self, outcome: str, rows: int) -> None:
        self.prediction_log.labels(outcome).inc(rows)

    def observe_shed(self, reason: str) -> None:
        self._shed_children[reason].inc()

    def observe_batch(self, scored: Scored, seconds: float) -> None:
        """One micro-batch: its rows and time, and its inputs into the drift window."""
        rows = len(scored.probabilities)
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)
        self.rows_scored.inc(rows)
        scored.model.drift.update(scored.numerical, scored.missing)
        scored.model.drift.update_outputs(scored.probabilities)

    def observe_events(self, report: Applied, newest: dict[str, float]) -> None:
        self.events.labels("accepted").inc(report.applied)
        self.events.labels("duplicate").inc(report.duplicates)
        self.events.labels("refused").inc(len(report.refused))
        for source, minutes in newest.items():
            self.events_newest.labels(source).set(minutes)

    def served(self, name: str, version: str, holdout: dict[str, float]) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version).set(1)
        self.holdout.clear()
        for figure, value in holdout.items():
            self.holdout.labels(version, figure).set(value)
        self.ready.set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
