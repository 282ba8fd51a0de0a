"""For operators: ``/metrics`` (Prometheus), ``/ui`` (the ops page) and the admin-scope JSON it
reads, across tenants: queue depth, workers online, batches with progress, recent failures,
and any job with its artifacts."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from jobs import batches, metrics
from producer import ops_queries as ops
from producer.deps import AdminDep, State, StateDep
from producer.errors import responses
from producer.live import Live
from producer.routes.artifacts import FILE_DOC, artifact_response
from producer.schemas import BatchView, JobView

router = APIRouter(tags=["operations"])


class LiveCollector(Collector):
    """Gauges read at scrape time (cached a few seconds): queue depth, unfinished jobs, workers."""

    def __init__(self, live: Live) -> None:
        self.live = live

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("mlq_queue_depth", "Messages waiting in Redis.", labels=["kind", "priority"])
        for (kind, priority), n in sorted(self.live.depth.get().items()):
            depth.add_metric([kind, str(priority)], n)
        yield depth
        jobs = GaugeMetricFamily("mlq_jobs", "Unfinished jobs in PostgreSQL.", labels=["kind", "status"])
        for (kind, job_status), n in sorted(self.live.unfinished.get().items()):
            jobs.add_metric([kind, job_status], n)
        yield jobs
        yield GaugeMetricFamily("mlq_workers_online", "Workers answering a ping.", value=len(self.live.workers.get()))
        work = self.live.tenants.get()
        per_tenant = GaugeMetricFamily(
            "mlq_tenant_jobs", "Jobs per tenant and kind: queued, running, and done in the last minute.",
            labels=["tenant", "kind", "status"],
        )  # fmt: skip
        share = GaugeMetricFamily(
            "mlq_tenant_share",
            "Each tenant's share of its kind's jobs done in the last minute.",
            labels=["tenant", "kind"],
        )
        for row in work:
            for name, column in (
                ("queued", "queued"),
                ("running", "running"),
                ("done_last_minute", "done_last_minute"),
            ):
                per_tenant.add_metric([row["tenant"], row["kind"], name], row[column])
            share.add_metric([row["tenant"], row["kind"]], row["share_last_minute"])
        yield per_tenant
        yield share


def live_registry(live: Live) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveCollector(live))
    return registry


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Counters and histograms of every API process, then the live gauges. They name tenants:
    with MLQ_METRICS_TOKEN set, only a scraper that sends it gets them."""
    token = state.settings.metrics_token
    if token and not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send the metrics token", {"WWW-Authenticate": "Bearer"})
    body = generate_latest(metrics.registry())
    try:
        body += generate_latest(state.live_registry)
    except Exception as exc:  # Redis or PostgreSQL away: the process's own metrics still answer
        body += f"# live gauges unavailable: {type(exc).__name__}\n".encode()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """The browser's tab icon for /ui and /docs (the one fastapi-offline ships)."""
    icon = resources.files("fastapi_offline").joinpath("static/favicon.png").read_bytes()
    return Response(icon, media_type="image/png", headers={"Cache-Control": "max-age=86400"})


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
def ops_page() -> HTMLResponse:
    """The ops page: it asks for an admin key, then reads /v1/ops/* every two seconds."""
    return HTMLResponse(resources.files("producer").joinpath("static/ui.html").read_text(encoding="utf-8"))


def overview(state: State) -> dict[str, Any]:
    live = state.live
    with state.sessions() as session:
        rows = ops.recent_batches(session)
        tallies = batches.counts(session, batch_ids=[b.id for b in rows])
        names = ops.tenant_names(session, tenant_ids=list({b.tenant_id for b in rows}))
        failures = ops.recent_failures(session)
        recent = ops.recent_jobs(session)
    depth: dict[str, dict[str, int]] = {}
    for (kind, priority), n in live.depth.get().items():
        depth.setdefault(kind, {})[str(priority)] = n
    unfinished: dict[str, dict[str, int]] = {}
    for (kind, job_status), n in live.unfinished.get().items():
        unfinished.setdefault(kind, {})[job_status] = n
    return {
        "queues": [
            {"kind": kind, "waiting": sum(by.values()), "by_priority": by, **unfinished.get(kind, {})}
            for kind, by in sorted(depth.items())
        ],
        "workers": live.workers.get(),
        "batches": [
            {**BatchView.of(b, tallies[b.id]).model_dump(mode="json"), "tenant": names.get(b.tenant_id)} for b in rows
        ],
        "failures": failures,
        "jobs": recent,
        "tenants": live.tenants.get(),
    }


@router.get("/v1/ops/overview", responses=responses())
async def ops_overview(state: StateDep, principal: AdminDep) -> dict[str, Any]:
    """Queue depth and unfinished jobs per kind, workers online, batches with counts, recent
    failures and recent jobs, across tenants (admin scope)."""
    return await run_in_threadpool(overview, state)


@router.get("/v1/ops/jobs/{job_id}", responses=responses(404))
def ops_job(job_id: uuid.UUID, state: StateDep, principal: AdminDep) -> dict[str, Any]:
    """Any tenant's job, with its artifacts (admin scope)."""
    with state.sessions() as session:
        job = ops.any_job(session, job_id=job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such job")
        files = ops.artifact_names(session, job_id=job_id)
    return {
        "job": JobView.of(job).model_dump(mode="json"),
        "artifacts": [
            {"name": name, "content_type": content_type, "url": f"/v1/ops/jobs/{job_id}/artifacts/{name}"}
            for name, content_type in files
        ],
    }


@router.get("/v1/ops/jobs/{job_id}/artifacts/{name}", response_class=Response, responses=FILE_DOC | responses(404))
def ops_artifact(job_id: uuid.UUID, name: str, state: StateDep, principal: AdminDep) -> Response:
    with state.sessions() as session:
        found = ops.any_artifact(session, job_id=job_id, name=name)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact")
    return artifact_response(state.artifacts.open(found.uri), content_type=found.content_type, name=name)
