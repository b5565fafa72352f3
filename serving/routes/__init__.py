"""The HTTP layer: one router per protocol over the app's one `ServingState`.

- `predict`: /predict and /model, the API's own protocol;
- `invocations`: MLflow's scoring protocol;
- `v2`: the Open Inference Protocol (KServe V2);
- `admin`: /admin/reload, behind the admin token;
- `metrics`: Prometheus' /metrics.

HTTP status codes and error bodies are chosen in these modules and only here.
"""
