"""What the app factory needs, built at the edge (`mlops serve`) from the settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 256  # rows per onnxruntime call when requests are gathered
    max_wait_ms: float = 0.0  # extra wait for company; under load batches form anyway
    max_request_rows: int = 10_000  # flights per request
    max_body_bytes: int = 8 * 1024 * 1024  # larger bodies get 413
    threads: int = 1  # onnxruntime intra-op threads of this worker
    poll_interval_s: float = 30.0  # 0: never poll the source, reload on request only
    admin_token: str = ""  # empty: admin endpoints are disabled
    drift_window_rows: int = 10_000
