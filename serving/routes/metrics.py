"""GET /metrics: this process's Prometheus metrics, for scraping (not in the API's docs)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.routes.deps import StateDep

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus(state: StateDep) -> Response:
    return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4")
