"""Worker-side commands: ``mlq worker`` and ``mlq models …``."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from jobs.errors import MlqError
from jobs.kinds import KINDS
from jobs.metricsdir import use_multiprocess_dir
from jobs.modelsfile import load_models_file
from jobs.queues import queue_name
from jobs.secrets import is_placeholder
from jobs.settings import get_settings

models_cli = typer.Typer(help="Inspect and prepare models.", no_args_is_help=True)


def parse_kinds(raw: str) -> list[str]:
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise typer.BadParameter(f"unknown kinds {unknown}; known: {', '.join(sorted(KINDS))}", param_hint="--kinds")
    configured = load_models_file(get_settings().models).kinds
    missing = [k for k in kinds if k not in configured]
    if missing:
        raise typer.BadParameter(f"the models file has no model for {missing}", param_hint="--kinds")
    return kinds


def worker(
    kinds: Annotated[str, typer.Option(help="Comma-separated job kinds this worker serves.")],
    gpu: Annotated[int | None, typer.Option(help="Pin to this GPU (CUDA_VISIBLE_DEVICES).")] = None,
    gpus: Annotated[
        str | None,
        typer.Option(help="Several GPUs, e.g. 0,1: one worker process per GPU, each with its own models."),
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Hide every GPU; run on the CPU.")] = False,
    concurrency: Annotated[int, typer.Option(help="Pool processes, each with its own model copy.")] = 1,
    torch_threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Torch CPU threads per pool process (default: the usable cores over --concurrency; "
            "fewer where the API and PostgreSQL share the machine).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Celery node name (default mlq-<gpu|cpu>-<pid>@host).")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Consume the queues of KINDS and run their jobs. Models load in each pool process."""
    from workers import placement

    served = parse_kinds(kinds)
    get_settings().require_database_url()
    if gpus is not None:
        if gpu is not None or cpu:
            raise typer.BadParameter("give --gpus alone, without --gpu or --cpu", param_hint="--gpus")
        try:
            indices = [int(part) for part in gpus.split(",") if part.strip()]
        except ValueError:
            raise typer.BadParameter(
                f"{gpus!r} is not a list of GPU numbers such as 0,1", param_hint="--gpus"
            ) from None
        if not indices or len(set(indices)) != len(indices) or min(indices) < 0:
            raise typer.BadParameter(f"{gpus!r}: give distinct GPU numbers such as 0,1", param_hint="--gpus")
        args = ["--kinds", ",".join(served), "--concurrency", str(concurrency), "--loglevel", loglevel]
        if torch_threads is not None:
            args += ["--torch-threads", str(torch_threads)]
        raise typer.Exit(placement.run_per_gpu(indices, args=args, metrics_port=get_settings().worker_metrics_port))
    if cpu:
        placement.hide_gpus()
    placement.pin_gpu(gpu)  # before anything imports torch
    node = name or f"mlq-{'cpu' if gpu is None else f'gpu{gpu}'}-{os.getpid()}@{socket.gethostname()}"
    if torch_threads is not None:
        os.environ[placement.THREADS_ENV] = str(torch_threads)
    os.environ.setdefault(placement.THREADS_ENV, str(placement.default_torch_threads(concurrency=concurrency)))
    placement.let_waiting_threads_sleep()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer must not fork threads
    settings = get_settings().model_copy(update={"worker_name": node})
    use_multiprocess_dir(settings.data_dir.resolve() / "metrics" / f"worker-{os.getpid()}")

    from workers import app as worker_app

    worker_app.configure(settings, kinds=served)
    serve_metrics(settings.worker_metrics_port)

    worker_app.app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queue_name(k) for k in served),
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--hostname",
            node,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--task-events",
        ]
    )


@models_cli.command("list")
def models_list() -> None:
    """Print the models file: which model serves each kind."""
    config = load_models_file(get_settings().models)
    typer.echo(f"profile {config.profile} ({config.source})")
    for kind, spec in sorted(config.kinds.items()):
        typer.echo(f"  {kind:24} {spec.model}" + (f"@{spec.revision}" if spec.revision else ""))


@models_cli.command("build-demo")
def models_build_demo() -> None:
    """Build the tiny local models of the demo profile into the data folder."""
    from models.tiny import build_all

    for name, path in build_all(data_dir=get_settings().data_dir).items():
        typer.echo(f"{name}: {path}")


def flower(
    basic_auth: Annotated[
        str | None,
        typer.Option(envvar="MLQ_FLOWER_BASIC_AUTH", help="user:password (comma-separate several). Required."),
    ] = None,
    address: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 unless you mean otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5555,
) -> None:
    """Run Flower on mlq's broker. Refuses to start without authentication."""
    if not basic_auth or any(":" not in pair or pair.endswith(":") for pair in basic_auth.split(",")):
        raise typer.BadParameter(
            "Flower must not run unauthenticated: set MLQ_FLOWER_BASIC_AUTH=user:password (or --basic-auth)",
            param_hint="--basic-auth",
        )
    if not get_settings().standalone and any(is_placeholder(pair.partition(":")[2]) for pair in basic_auth.split(",")):
        raise typer.BadParameter(
            "a placeholder password is not a credential; choose a real one", param_hint="--basic-auth"
        )
    from celery.bin.celery import celery

    guard_flower()
    settings = get_settings()
    settings.require_redis_url()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery.main(
        args=[
            "--app",
            "workers.app:app",
            "flower",
            f"--address={address}",
            f"--port={port}",
            f"--basic-auth={basic_auth}",
            "--persistent=True",  # task history survives a restart
            f"--db={settings.data_dir / 'flower.db'}",
            "--state_save_interval=60000",
            "--purge_offline_workers=60",  # the state persists: a previous run's workers are not listed
        ],
        prog_name="mlq flower",
    )


def guard_flower() -> None:
    """Flower serves ``/metrics`` and ``/healthcheck`` without credentials, and both name the
    workers: put them behind the same basic auth as every other page."""
    from flower.views import monitor
    from tornado import web

    for handler in (monitor.Metrics, monitor.Healthcheck):
        handler.get = web.authenticated(handler.get)


@models_cli.command("fetch")
def models_fetch(
    models: Annotated[str | None, typer.Option(help="Models file or profile (default MLQ_MODELS).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Hugging Face cache folder (default HF_HOME).")] = None,
    pin: Annotated[
        Path | None,
        typer.Option(help="Write the models file again here, each hub model pinned to the commit fetched."),
    ] = None,
) -> None:
    """Download (hub models) or build (builtin models) everything the models file names.
    With --pin, write a lock file that workers load exactly (deploy with MLQ_MODELS=<it>)."""
    from models.fetch import fetch_models
    from models.fetch import pin as pinned

    settings = get_settings()
    config = load_models_file(models or settings.models)
    try:
        fetched = fetch_models(config, data_dir=settings.data_dir, cache_dir=cache_dir)
    except MlqError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for item in fetched:
        typer.echo(f"{item.kind:22} {item.ref}" + (f"@{item.revision}" if item.revision else "") + f" -> {item.path}")
    if pin is not None:
        pin.write_text(pinned(Path(config.source).read_text(encoding="utf-8"), fetched), encoding="utf-8")
        load_models_file(pin)  # what was written loads
        typer.echo(f"pinned models file: {pin} (deploy with MLQ_MODELS={pin})")


def reconcile(
    every: Annotated[float | None, typer.Option(help="Seconds between rounds (MLQ_RECONCILE_EVERY_S).")] = None,
    once: Annotated[bool, typer.Option("--once", help="One round, print what it did, exit.")] = False,
) -> None:
    """Put right what the broker or a worker lost: expired leases, lost wake-ups, dead letters.
    Run one per deployment (`mlq standalone` runs it); extra ones wait as standbys."""
    from jobs.artifacts import LocalArtifactStore
    from jobs.db import make_engine, make_sessionmaker
    from jobs.retention import Pruner, prune_engine
    from workers.app import app
    from workers.pruning import PruneSchedule
    from workers.reconciler import Reconciler

    settings = get_settings()
    # the advisory lock's connection and the rounds' statements; the prune has one of its own
    engine = make_engine(settings.require_database_url(), pool_size=2, plan_each_statement=True)
    pruner = Pruner(
        make_sessionmaker(prune_engine(settings.require_database_url())),
        artifacts=LocalArtifactStore(settings.artifacts_path),
        retention_days=settings.retention_days, batch_rows=settings.prune_batch_rows, pause_s=settings.prune_pause_s,
    )  # fmt: skip
    reconciler = Reconciler(
        engine=engine,
        app=app,
        models=load_models_file(settings.models),
        requeue_after_s=settings.requeue_after_s,
        prune=PruneSchedule(pruner, every_s=settings.prune_every_s),
        lease_grace_s=settings.lease_s,
    )
    if once:
        done = reconciler.run_once()
        typer.echo(
            f"leases taken back {done.requeued}, dead-lettered {done.dead}, republished {done.republished}"
            + (" (broker unavailable)" if done.broker_down else "")
        )
        return
    serve_metrics(settings.reconciler_metrics_port)
    reconciler.run_forever(every_s=every or settings.reconcile_every_s)


def serve_metrics(port: int) -> None:
    """/metrics of this process (and of its pool processes, through the multiprocess folder),
    on a thread; a port already in use is reported, not fatal."""
    if not port:
        return
    from prometheus_client import start_http_server

    from jobs.metrics import registry

    try:
        start_http_server(port, registry=registry())
    except OSError as exc:
        typer.echo(f"warning: metrics not served on port {port}: {exc}", err=True)
