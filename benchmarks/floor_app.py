"""The HTTP floor for benchmarks/serving.py: FastAPI validating the same /predict body as the
real server and returning a constant, on the same uvicorn settings."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from serving.config import ServeConfig
from serving.schemas import predict_request

app = FastAPI()
PredictRequest = predict_request(ServeConfig().max_request_rows)
CONSTANT = {"delay_probability": 0.2, "delayed": False, "defaults_used": []}


@app.post("/predict")
async def predict(body: PredictRequest) -> JSONResponse:  # type: ignore[valid-type]
    return JSONResponse(
        {"predictions": [CONSTANT] * len(body.flights), "model": {"name": "floor", "version": "0"}}
    )


@app.get("/health")
async def health() -> dict:
    return {"ok": True}
