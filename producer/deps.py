"""FastAPI dependencies: the store session, the caller's principal, app state."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from jobs import keys
from jobs.artifacts import ArtifactStore
from jobs.modelsfile import ModelsConfig
from jobs.settings import Settings
from producer.downloads import Downloads
from producer.intake import Intake
from producer.live import Live
from producer.publish import Publisher
from producer.ratelimit import RateLimiter
from producer.waiter import Waiter

KEY_CACHE_S = 5.0  # a revoked key stops working within this long

# A client that sends the header with no value ("" from an unset variable) would otherwise
# have every job after its first replay that first one: refused, naming the header.
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=255)]


@dataclass
class State:
    settings: Settings
    sessions: sessionmaker[Session]
    models: ModelsConfig
    publisher: Publisher
    limiter: RateLimiter
    live: Live  # readings for operators (queue depth, workers, unfinished jobs)
    live_registry: CollectorRegistry  # the same, as Prometheus gauges
    waiter: Waiter
    intake: Intake  # group commit of single jobs
    artifacts: ArtifactStore
    downloads: Downloads  # inputs given by URL, fetched at submission
    keys: dict[str, tuple[float, keys.Principal]]


# Dependencies are ``async def`` where they do not block: FastAPI runs a plain ``def``
# dependency on a worker thread, a hop that costs every request on the submit path.


async def get_state(request: Request) -> State:
    state: State = request.app.state.mlq
    return state


StateDep = Annotated[State, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

bearer = HTTPBearer(auto_error=False, description="An API key from `mlq keys create`.")


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


PRINCIPAL = "mlq_principal"  # where the gate leaves the principal it checked, in the request's scope state


async def principal_of(state: State, authorization: str | None) -> keys.Principal:
    """The principal of an ``Authorization: Bearer <key>`` header: from a cache of recent keys,
    else looked up on a worker thread; 401 for a missing, unknown or revoked key."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise unauthorized("missing API key: send Authorization: Bearer <key>")
    cached = state.keys.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < KEY_CACHE_S:
        return cached[1]

    def look_up() -> keys.Principal | None:
        with state.sessions() as session:
            return keys.authenticate(session, key=key)

    principal = await run_in_threadpool(look_up)
    if principal is None:
        state.keys.pop(key, None)
        raise unauthorized("invalid or revoked API key")
    state.keys[key] = (now, principal)
    return principal


async def get_principal(
    request: Request,
    state: StateDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],  # documents the scheme in OpenAPI
) -> keys.Principal:
    """The caller's principal, as a dependency (it documents the key's scheme in OpenAPI)."""
    return await principal_of_request(request, state=state)


async def principal_of_request(request: Request, *, state: State) -> keys.Principal:
    """The caller's principal: checked by the gate already for requests with a body."""
    checked: keys.Principal | None = request.scope.get("state", {}).get(PRINCIPAL)
    if checked is not None:
        return checked
    return await principal_of(state, request.headers.get("authorization"))


def require_scope(principal: keys.Principal, *, scope: str) -> None:
    """403 unless the key has ``scope``."""
    if scope not in principal.scopes:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this API key lacks the {scope!r} scope")


def require(scope: str) -> Callable[..., Awaitable[keys.Principal]]:
    async def check(principal: Annotated[keys.Principal, Depends(get_principal)]) -> keys.Principal:
        require_scope(principal, scope=scope)
        return principal

    return check


SubmitterDep = Annotated[keys.Principal, Depends(require("submit"))]
ReaderDep = Annotated[keys.Principal, Depends(require("read"))]
AdminDep = Annotated[keys.Principal, Depends(require("admin"))]
