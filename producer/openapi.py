"""The OpenAPI document with this deployment's own numbers in it: what ``?wait`` and ``?limit``
may be, and which kinds are served. The routes are declared once, at import; these come from
the settings and the models file, so they are written into the document when it is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from jobs.settings import Settings


def with_deployment_limits(app: FastAPI, *, settings: Settings, kinds: list[str]) -> Callable[[], dict[str, Any]]:
    """``app.openapi``, bounded as this deployment bounds requests."""
    build = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        maximum = {"wait": settings.max_wait_s, "limit": settings.page_size_max}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    name = parameter["name"]
                    if name in maximum and "maximum" not in parameter["schema"]:
                        parameter["schema"]["maximum"] = maximum[name]
                    if name == "kind" and path == "/v1/batches":
                        parameter["schema"] = {"anyOf": [{"enum": kinds}, {"type": "null"}]}
                for form in operation.get("requestBody", {}).get("content", {}).values():  # a bulk run's forms
                    body = form.get("schema", {})
                    if "kind" in body.get("properties", {}):
                        body["properties"]["kind"] = {"anyOf": [{"enum": kinds}, {"type": "null"}]}
        schema["components"]["schemas"]["SubmitJob"]["properties"]["kind"]["enum"] = kinds
        app.openapi_schema = schema
        return schema

    return document
