"""Producer-side commands: ``mlq api``, ``mlq keys …``, ``mlq submit``."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from jobs.settings import get_settings

keys = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)

ApiUrl = Annotated[str, typer.Option(envvar="MLQ_API_URL", help="Base URL of the mlq API.")]
ApiKey = Annotated[str, typer.Option(envvar="MLQ_API_KEY", help="An API key (mlq keys create).")]


def api(
    host: Annotated[str | None, typer.Option(help="Address to bind (MLQ_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MLQ_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    uvicorn.run(
        "producer.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level=os.environ.get("MLQ_LOG_LEVEL", "info").lower(),
        access_log=False,
    )


@keys.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to (created if new).")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: submit,read,admin.")] = "submit,read",
) -> None:
    """Create an API key and print it. It is shown only this once."""
    from jobs import store
    from jobs.db import make_engine, make_sessionmaker

    engine = make_engine(get_settings().require_database_url(), pool_size=1)
    try:
        with make_sessionmaker(engine).begin() as session:
            key, _ = store.create_api_key(session, tenant=tenant, scopes=[s for s in scopes.split(",") if s])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from None
    finally:
        engine.dispose()
    typer.echo(key)


@keys.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix (its second part).")]) -> None:
    """Revoke an API key; requests with it get 401 within seconds."""
    from jobs import store
    from jobs.db import make_engine, make_sessionmaker

    engine = make_engine(get_settings().require_database_url(), pool_size=1)
    with make_sessionmaker(engine).begin() as session:
        revoked = store.revoke_api_key(session, prefix=prefix)
    engine.dispose()
    if not revoked:
        typer.echo(f"no active key with prefix {prefix}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {prefix}")


def submit(
    kind: Annotated[str, typer.Argument(help="Job kind, e.g. text-classification.")],
    input_json: Annotated[str, typer.Option("--input", help='The input as JSON, e.g. {"text": "hi"}.')],
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = "",
    wait: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 0,
    priority: Annotated[int | None, typer.Option(help="0..9, 9 most urgent.")] = None,
) -> None:
    """Submit one job and print it (with --wait, its result)."""
    from producer.client import ApiError, Client

    try:
        payload = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    with Client(api_url, api_key) as client:
        try:
            job = client.submit(kind, payload, priority=priority, wait_s=wait)
        except ApiError as exc:
            typer.echo(json.dumps({"status": exc.status, "detail": exc.detail}, indent=2), err=True)
            raise typer.Exit(1) from None
    typer.echo(json.dumps(job, indent=2, ensure_ascii=False))
