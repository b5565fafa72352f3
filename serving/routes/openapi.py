"""The OpenAPI pieces the routers share, and request bodies declared by hand.

/predict and V2's /infer parse their bodies themselves (pydantic-core straight from the bytes,
no FastAPI body parameter: faster, and V2 has a binary form), so FastAPI cannot see their
request models: `json_body` documents them, `with_components` adds the models they refer to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from serving.schemas import ErrorResponse

COMPONENT = "#/components/schemas/{model}"

# FastAPI's own 422 body, as a route with a body parameter documents it
VALIDATION_ERROR = {
    "description": "Validation Error: the field and the reason",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "no model loaded yet"}
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "the body is over the limit"}
}
BODY_ERRORS = {**TOO_LARGE, **UNAVAILABLE}  # every route that takes a body


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema, its references pointing into the document's components."""
    schema = model.model_json_schema(ref_template=COMPONENT)
    schema.pop("$defs", None)
    return schema


def json_body(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    """A route's `openapi_extra`: a required JSON request body with this schema."""
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def with_components(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add the models these hand-declared bodies refer to, where FastAPI has not already."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                defs = model.model_json_schema(ref_template=COMPONENT).get("$defs", {})
                for name, schema in defs.items():
                    schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
