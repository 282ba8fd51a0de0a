"""Producer-side commands: ``mlq api``, ``mlq keys …``, ``mlq submit``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobs.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

keys = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)

ApiUrl = Annotated[str, typer.Option(envvar="MLQ_API_URL", help="Base URL of the mlq API.")]
ApiKey = Annotated[str, typer.Option(envvar="MLQ_API_KEY", help="An API key (mlq keys create).")]


def connect(api_url: str, api_key: str) -> Any:
    """A client of the API; a missing key is said at once (the API would answer 401)."""
    from jobs.errors import NotConfigured
    from producer.client import Client

    if not api_key.strip():
        raise NotConfigured(
            "no API key: pass --api-key or set MLQ_API_KEY (`mlq keys create --tenant T` makes one; "
            "`mlq standalone` prints one)"
        )
    return Client(api_url, api_key)


def show(value: Any) -> None:
    """A result on stdout, as one line of JSON (pipe it to jq); notes go to stderr."""
    typer.echo(json.dumps(value, ensure_ascii=False))


@contextmanager
def operator_session() -> Iterator[Session]:
    """One transaction on MLQ_DATABASE_URL for an operator command, its engine closed after."""
    from jobs.db import make_engine, make_sessionmaker

    engine = make_engine(get_settings().require_database_url(), pool_size=1)
    try:
        with make_sessionmaker(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def api(
    host: Annotated[str | None, typer.Option(help="Address to bind (MLQ_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MLQ_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from jobs.metricsdir import use_multiprocess_dir

    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    # every uvicorn worker process writes its metrics here; /metrics in any of them reads all
    use_multiprocess_dir(settings.data_dir.resolve() / "metrics" / f"api-{os.getpid()}")
    uvicorn.run(
        "producer.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level=os.environ.get("MLQ_LOG_LEVEL", "info").lower(),
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,  # json: ours
        access_log=False,
    )


@keys.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to (created if new).")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: submit,read,admin.")] = "submit,read",
) -> None:
    """Create an API key and print it. It is shown only this once."""
    from jobs import keys as api_keys

    try:
        with operator_session() as session:
            key, _ = api_keys.create_api_key(session, tenant=tenant, scopes=[s for s in scopes.split(",") if s])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from None
    typer.echo(key)


@keys.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix (its second part).")]) -> None:
    """Revoke an API key; requests with it get 401 within seconds."""
    from jobs import keys as api_keys

    with operator_session() as session:
        revoked = api_keys.revoke_api_key(session, prefix=prefix)
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
    """Submit one job and print it as one line of JSON (with --wait, its result)."""
    try:
        payload = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    with connect(api_url, api_key) as client:
        show(client.submit(kind, payload, priority=priority, wait_s=wait))


batch = typer.Typer(
    help="Bulk runs: submit a JSONL file, watch it, fetch its results, cancel it.", no_args_is_help=True
)


def progress_until_done(client: Any, batch_id: str) -> dict[str, Any]:
    """A live bar: items done (succeeded + failed + cancelled), failures, rate and ETA."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed  {task.fields[rate]:.0f} items/s"),
        TimeRemainingColumn(),
    )
    from rich.console import Console

    started = time.monotonic()
    with Progress(*columns, console=Console(stderr=True)) as bar:
        current = client.batches.get(batch_id)
        task = bar.add_task(batch_id[:8], total=current["counts"]["total"], failed=0, rate=0.0)
        while True:
            counts = current["counts"]
            done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
            rate = done / max(1e-6, time.monotonic() - started)
            bar.update(task, completed=done, failed=counts["failed"], rate=rate)
            if current["status"] in ("completed", "failed", "cancelled"):
                return dict(current)
            time.sleep(0.5)
            current = client.batches.get(batch_id)


@batch.command("submit")
def batch_submit(
    file: Annotated[str, typer.Argument(help='JSONL: one {"custom_id", "kind"?, "input"} per line.')],
    kind: Annotated[str | None, typer.Option(help="Kind for lines that name none.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the batch finishes.")] = False,
    priority: Annotated[int | None, typer.Option(help="0..4 (bulk runs stay below single jobs).")] = None,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = "",
) -> None:
    """Submit a bulk run; prints the batch as one line of JSON (with --wait, once it finished,
    a live progress bar on stderr meanwhile)."""
    with connect(api_url, api_key) as client:
        created = client.batches.submit(file, kind=kind, priority=priority)
        typer.echo(f"batch {created['id']}: {created['counts']['total']} items accepted", err=True)
        show(progress_until_done(client, created["id"]) if wait else created)


@batch.command("status")
def batch_status(batch_id: str, api_url: ApiUrl = "http://127.0.0.1:8000", api_key: ApiKey = "") -> None:
    """Print a batch's status and counts."""
    with connect(api_url, api_key) as client:
        show(client.batches.get(batch_id))


@batch.command("results")
def batch_results(
    batch_id: str,
    output: Annotated[str, typer.Option("-o", "--output", help="Write the JSONL here (- for stdout).")] = "-",
    status: Annotated[str | None, typer.Option(help="Only items with this status, e.g. failed.")] = None,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = "",
) -> None:
    """Fetch the results as JSONL, in input order (partial while the batch runs)."""
    import sys

    with connect(api_url, api_key) as client:
        lines = client.batches.results(batch_id, status=status)
        if output == "-":
            for line in lines:
                sys.stdout.buffer.write(line)
            return
        count = 0
        with open(output, "wb") as out:
            for line in lines:
                out.write(line)
                count += 1
    typer.echo(f"{count} results written to {output}")


@batch.command("cancel")
def batch_cancel(batch_id: str, api_url: ApiUrl = "http://127.0.0.1:8000", api_key: ApiKey = "") -> None:
    """Cancel a batch: queued items at once; finished results stay available."""
    with connect(api_url, api_key) as client:
        show(client.batches.cancel(batch_id))


@keys.command("limits")
def keys_limits(
    tenant: Annotated[str, typer.Option(help="The tenant whose limits to set.")],
    jobs_per_minute: Annotated[
        int | None, typer.Option(min=0, help="Single jobs accepted per minute; 0: no limit; unset: the default.")
    ] = None,
    max_active_jobs_per_kind: Annotated[
        int | None, typer.Option(min=0, help="Queued + running single jobs per kind; 0: no limit; unset: the default.")
    ] = None,
    share: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="Its weight when tenants share a kind's workers (default 1); unset: kept."),
    ] = None,
    retention_days: Annotated[
        int | None,
        typer.Option(
            min=-1, help="Days its finished jobs are kept; 0: forever; -1: MLQ_RETENTION_DAYS's; unset: kept."
        ),
    ] = None,
) -> None:
    """Set a tenant's own submission limits (MLQ_JOBS_PER_MINUTE and MLQ_MAX_ACTIVE_JOBS_PER_KIND
    are the defaults); over a limit the API answers 429 with Retry-After. ``--share 3`` gives
    the tenant three places in a kind's queue for each of a share-1 tenant's; ``--retention-days 7``
    prunes its finished jobs a week after they finished (`mlq prune`)."""
    from jobs import keys as api_keys

    with operator_session() as session:
        found = api_keys.set_tenant_limits(
            session, tenant=tenant, jobs_per_minute=jobs_per_minute, max_active_jobs_per_kind=max_active_jobs_per_kind,
            share=share, retention_days=retention_days,
        )  # fmt: skip
    if not found:
        typer.echo(f"no tenant {tenant!r}", err=True)
        raise typer.Exit(1)
    shown = "" if share is None else f", share={share}"
    if retention_days is not None:
        shown += f", retention_days={'default' if retention_days < 0 else retention_days}"
    typer.echo(
        f"{tenant}: jobs_per_minute={jobs_per_minute}, max_active_jobs_per_kind={max_active_jobs_per_kind}{shown}"
    )


@keys.command("webhook-secret")
def keys_webhook_secret(tenant: Annotated[str, typer.Option(help="The tenant whose secret to print.")]) -> None:
    """Print the secret that signs this tenant's webhooks (HMAC-SHA256, header Mlq-Signature)."""
    from jobs import keys as api_keys

    with operator_session() as session:
        secret = api_keys.webhook_secret(session, tenant=tenant)
    if secret is None:
        typer.echo(f"no tenant {tenant!r}", err=True)
        raise typer.Exit(1)
    typer.echo(secret)


def prune(
    batch_rows: Annotated[
        int | None, typer.Option(min=1, help="Jobs deleted per transaction (MLQ_PRUNE_BATCH_ROWS).")
    ] = None,
) -> None:
    """Prune now what retention has passed (MLQ_RETENTION_DAYS, or a tenant's own): finished jobs
    with their artifacts and webhook rows, and finished bulk runs whole. Prints what it removed
    as one line of JSON. The reconciler does the same every MLQ_PRUNE_EVERY_S."""
    from jobs.artifacts import LocalArtifactStore
    from jobs.db import make_sessionmaker
    from jobs.retention import Pruner, prune_engine

    settings = get_settings()
    engine = prune_engine(settings.require_database_url())
    try:
        pruner = Pruner(
            make_sessionmaker(engine), artifacts=LocalArtifactStore(settings.artifacts_path),
            retention_days=settings.retention_days, batch_rows=batch_rows or settings.prune_batch_rows,
            pause_s=settings.prune_pause_s,
        )  # fmt: skip
        show(pruner.prune().as_dict())
    finally:
        engine.dispose()
