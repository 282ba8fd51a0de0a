"""The FastAPI application: ``create_app()``; served by ``mlq api``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from jobs.artifacts import LocalArtifactStore
from jobs.db import make_engine, make_sessionmaker
from jobs.modelsfile import load_models_file
from jobs.settings import Settings, get_settings
from producer import errors
from producer.deps import State
from producer.downloads import Downloads
from producer.gate import Gate
from producer.intake import Intake
from producer.live import Live
from producer.openapi import with_deployment_limits
from producer.publish import Publisher
from producer.ratelimit import RateLimiter
from producer.routes import artifacts, batches, health, jobs, models, openai_audio, openai_compat, openai_files, ops
from producer.waiter import Waiter
from producer.webhooks import Dispatcher

log = logging.getLogger("mlq.api")

DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts, and the favicon


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.require_database_url(), pool_size=settings.db_pool_size)
        publisher = Publisher(settings)
        limiter = RateLimiter(settings)
        waiter = Waiter(settings.require_database_url())
        waiter.start()
        sessions = make_sessionmaker(engine)
        artifacts = LocalArtifactStore(settings.artifacts_path)
        live = Live(settings=settings, sessions=sessions, publisher=publisher)
        dispatcher = Dispatcher(sessions=sessions, settings=settings) if settings.webhooks_in_api else None
        if dispatcher is not None:
            dispatcher.start()
        app.state.mlq = State(
            settings=settings,
            sessions=sessions,
            models=load_models_file(settings.models),
            publisher=publisher,
            limiter=limiter,
            live=live,
            live_registry=ops.live_registry(live),
            waiter=waiter,
            intake=Intake(
                settings=settings, sessions=sessions, publisher=publisher, limiter=limiter, artifacts=artifacts
            ),
            artifacts=artifacts,
            downloads=Downloads(settings),
            keys={},
        )
        # Everything imported and built so far lives as long as the process: out of the
        # collector's generations, a full collection no longer stalls a request to walk it.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()
            await waiter.stop()
            publisher.close()
            limiter.close()
            live.close()
            engine.dispose()

    # /docs and /redoc from files installed with mlq (fastapi-offline), not from a CDN: they
    # work on a machine with no network, and load nothing from elsewhere
    app = FastAPIOffline(
        title="mlq",
        version="0.1.0",
        summary="Asynchronous AI jobs: submit, wait, read results.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        favicon_url="/favicon.ico",
    )
    app.include_router(jobs.router)
    app.include_router(artifacts.router)
    app.include_router(batches.router)
    app.include_router(models.router)
    app.include_router(openai_compat.router)
    app.include_router(openai_files.router)
    app.include_router(openai_audio.router)
    app.include_router(health.router)
    app.include_router(ops.router)

    app.openapi = with_deployment_limits(  # type: ignore[method-assign]
        app, settings=settings, kinds=sorted(load_models_file(settings.models).kinds)
    )
    app.add_middleware(Gate, settings=settings)
    errors.install(app)
    return app
