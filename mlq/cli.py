"""The ``mlq`` command. Each layer owns its commands; this module only composes them
(``producer.cli``, ``workers.cli``) and adds the whole-stack ones."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from jobs.settings import get_settings
from producer import cli as producer_cli
from workers import cli as workers_cli

app = typer.Typer(help="mlq: AI jobs in the background.", no_args_is_help=True, add_completion=False)
SERVICES = {"api", "worker", "reconcile", "flower"}  # long-running: they refuse placeholder secrets


def print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"mlq {version('mlq')}")
        raise typer.Exit()


@app.callback()
def startup(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """mlq: AI jobs in the background."""
    if ctx.invoked_subcommand not in SERVICES:
        return
    from jobs.secrets import PlaceholderSecret, refuse_placeholders

    try:
        refuse_placeholders(get_settings(), basic_auth=os.environ.get("MLQ_FLOWER_BASIC_AUTH"))
    except PlaceholderSecret as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None


app.command("api")(producer_cli.api)
app.command("submit")(producer_cli.submit)
app.command("prune")(producer_cli.prune)
app.add_typer(producer_cli.keys, name="keys")
app.add_typer(producer_cli.batch, name="batch")


app.command("worker")(workers_cli.worker)
app.command("flower")(workers_cli.flower)
app.command("reconcile")(workers_cli.reconcile)
app.add_typer(workers_cli.models_cli, name="models")


@app.command("migrate")
def migrate_cmd() -> None:
    """Apply the database migrations (MLQ_DATABASE_URL)."""
    from jobs.migrate import upgrade

    upgrade(get_settings().require_database_url())
    typer.echo("database is at the latest migration")


@app.command("standalone")
def standalone(
    port: Annotated[int | None, typer.Option(help="API port (default MLQ_API_PORT, 8000).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data folder (default MLQ_DATA_DIR, .mlq).")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Run `mlq demo` once the stack is up.")] = False,
    exit_after_demo: Annotated[bool, typer.Option(help="Stop after the demo instead of serving.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the embedded servers' own output.")] = False,
) -> None:
    """Run everything on this machine: embedded PostgreSQL and Redis (unless their URLs are
    set), migrations, the API and one worker per kind group. Ctrl-C stops it all."""
    from mlq.standalone import Stack

    if not verbose:  # pgserver logs each initdb and pg_ctl command whole, about 60 lines a start
        import logging
        import warnings

        logging.getLogger("pgserver").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    if data_dir is not None:
        os.environ["MLQ_DATA_DIR"] = str(data_dir)
        get_settings.cache_clear()
    stack = Stack(get_settings(), port=port, echo=typer.echo)
    code = 0
    try:
        stack.start()
        metrics_urls = "\n".join(f"  metrics  {url}  ({name})" for name, url in stack.metrics_urls.items())
        typer.echo(
            f"\nmlq is up\n  API      {stack.api_url}   (docs {stack.api_url}/docs)\n"
            f"  API key  {stack.api_key}   (all scopes: use it on the ops page)\n"
            f"  ops page {stack.api_url}/ui\n"
            f"  Flower   {stack.flower_url}   (user:password {stack.flower_auth})\n"
            f"{metrics_urls}\n  state    {stack.data_dir / 'standalone.json'}\n"
        )
        if demo:
            from mlq.demo import run_demo
            from producer.client import Client

            with Client(stack.api_url, stack.api_key) as client:
                jobs = run_demo(client, out_dir=stack.data_dir / "demo-output", echo=typer.echo)
            code = 0 if all(j["status"] == "succeeded" for j in jobs) else 1
        if exit_after_demo:
            typer.echo(next_steps(stack.data_dir))
        else:
            typer.echo("serving; Ctrl-C stops every process")
            code = stack.wait() or code
    finally:
        stack.stop()
    raise typer.Exit(code)


def next_steps(data_dir: Path) -> str:
    return (
        "\nwhat next\n"
        "  make run                          the same stack, serving until Ctrl-C (docs at /docs, ops page at /ui)\n"
        "  source .venv/bin/activate         puts `mlq` on your PATH\n"
        f"  export MLQ_API_KEY=$(jq -r .api_key {data_dir / 'standalone.json'})   once `make run` is up\n"
        '  mlq submit embedding --input \'{"text": "kitten"}\' --wait 30\n'
        "  mlq batch submit posts.jsonl --kind moderation --wait\n"
        "  README.md                          every kind with an example, bulk runs, deployment"
    )


@app.command("demo")
def demo(
    api_url: Annotated[str | None, typer.Option(envvar="MLQ_API_URL")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="MLQ_API_KEY")] = None,
) -> None:
    """Submit an example job of every served kind and print the results. Without
    --api-url/--api-key, uses the running `mlq standalone` in MLQ_DATA_DIR."""
    from mlq.demo import run_demo
    from producer.client import Client

    if not (api_url and api_key):
        state_file = get_settings().data_dir / "standalone.json"
        if not state_file.exists():
            raise typer.BadParameter("no --api-url/--api-key and no running `mlq standalone` here")
        state = json.loads(state_file.read_text())
        api_url, api_key = api_url or state["api_url"], api_key or state["api_key"]
    with Client(api_url, api_key) as client:
        jobs = run_demo(client, out_dir=get_settings().data_dir / "demo-output", echo=typer.echo)
    raise typer.Exit(0 if all(j["status"] == "succeeded" for j in jobs) else 1)


def main() -> None:
    """The console script: the commands, and one line (exit status 1) for a problem the user
    can fix (mlq/errors.py) instead of a traceback."""
    import sys

    from jobs import logs
    from mlq.errors import explain

    logs.configure(get_settings().log_format)
    try:
        app()
    except Exception as exc:
        said = explain(exc)
        if said is None:
            raise
        typer.echo(f"mlq: {said}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
