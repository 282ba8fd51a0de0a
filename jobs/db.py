"""Engines and sessions for PostgreSQL (psycopg 3)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from urllib.parse import quote, unquote, urlencode, urlsplit

from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

NOTIFY_CHANNEL = "mlq_job_finished"  # payload: comma-separated ids of jobs that reached a final state


def normalize_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+psycopg:// alike, and libpq's list of
    hosts (``postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write``, for a
    primary and its standbys), which SQLAlchemy spells ``?host=h1,h2&port=5432,5433``."""
    parsed = make_url(_hosts_to_query(url.replace("postgres://", "postgresql://", 1)))
    if parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same database as a plain libpq URL (for psycopg.connect), a list of hosts in libpq's
    own form: ``postgresql://u@h1:5432,h2:5433/db?...``."""
    parsed = make_url(normalize_url(url)).set(drivername="postgresql")
    hosts = _listed_hosts(parsed)
    if hosts is None:
        return parsed.render_as_string(hide_password=False)
    auth = quote(parsed.username or "", safe="")
    if parsed.password is not None:
        auth += ":" + quote(str(parsed.password), safe="")
    netloc = ",".join(_host_port(host, port) for host, port in hosts)
    rest = [(k, v) for k, vs in parsed.query.items() if k not in ("host", "port") for v in _values(vs)]
    query = "?" + urlencode(rest) if rest else ""
    return f"postgresql://{auth + '@' if auth else ''}{netloc}/{quote(parsed.database or '', safe='')}{query}"


def _host_port(host: str, port: str) -> str:
    name = f"[{host}]" if ":" in host else quote(host, safe="")  # an IPv6 address in brackets
    return f"{name}:{port}" if port else name


def _values(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def _hosts_to_query(url: str) -> str:
    """libpq's ``h1:p1,h2:p2`` in the authority moved to ``?host=h1,h2&port=p1,p2``; else ``url``."""
    parts = urlsplit(url)
    auth, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    names, ports = [], []
    for one in hosts.split(","):
        if one.startswith("["):  # [IPv6]:port
            name, _, port = one[1:].partition("]")
            port = port.removeprefix(":")
        else:
            name, _, port = one.partition(":")
        names.append(unquote(name))
        ports.append(port)
    query = parts.query + ("&" if parts.query else "") + urlencode({"host": ",".join(names)})
    if any(ports):
        query += "&" + urlencode({"port": ",".join(ports)})
    return parts._replace(netloc=auth + at, query=query).geturl()


def _listed_hosts(parsed: URL) -> list[tuple[str, str]] | None:
    """The (host, port) pairs of a URL that lists several hosts in its query; None for one."""
    host = parsed.query.get("host")
    if isinstance(host, tuple):  # SQLAlchemy's other spelling: ?host=h1:p1&host=h2:p2
        return [(name, port) for name, _, port in (h.partition(":") for h in host)]
    if host is None or "," not in host:
        return None
    names, ports = host.split(","), ",".join(_values(parsed.query.get("port", ""))).split(",")
    if len(ports) == 1:
        ports *= len(names)  # libpq: one port for every host
    if len(ports) != len(names):
        raise ValueError(f"the database URL lists {len(names)} hosts and {len(ports)} ports")
    return list(zip(names, ports, strict=True))


# A statement whose best plan depends on how many jobs are queued is planned for the values it
# runs with, each time. psycopg prepares a statement after its fifth run, and PostgreSQL may
# then keep one generic plan for the connection's life: chosen while the queue held a few
# hundred rows, the claim's was two sequential scans of ``jobs`` (a ``ctid = ANY`` filter
# instead of a TID scan), 90 ms a claim once a bulk run had queued 200,000 rows, against 2 ms
# planned afresh; the 200,000 drained at 110 jobs/s instead of 3,300 (bench soak). The claim
# runs unprepared (``planned_afresh``); the reconciler plans every statement afresh
# (``plan_each_statement``: its few statements a second read the whole queue's state). The
# hot path's other statements read rows by id, or the head of one index whatever the queue's
# size, and keep their prepared plans: planning all of them cost single jobs ~10 % in bench
# pipeline (tests/integration/test_claim_plans.py, bench/README.md).
PLAN_EACH_STATEMENT = "-c plan_cache_mode=force_custom_plan"


@contextlib.contextmanager
def planned_afresh(session: Session) -> Iterator[None]:
    """Statements run inside are sent unprepared: PostgreSQL plans each for its values."""
    driver = session.connection().connection.driver_connection
    before = driver.prepare_threshold  # type: ignore[union-attr]
    driver.prepare_threshold = None  # type: ignore[union-attr]
    try:
        yield
    finally:
        driver.prepare_threshold = before  # type: ignore[union-attr]


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    plan_each_statement: bool = False,
    server_settings: Mapping[str, str] | None = None,
) -> Engine:
    """``server_settings``: PostgreSQL settings for every connection (``-c name=value``)."""
    parsed = make_url(normalize_url(url))
    given = parsed.query.get("options")  # a URL's own ?options=-c ... (search_path, say) are kept
    wanted = [*_values(given or ""), PLAN_EACH_STATEMENT if plan_each_statement else ""]
    wanted += [f"-c {name}={value}" for name, value in (server_settings or {}).items()]
    options = " ".join(o for o in wanted if o)
    return create_engine(
        parsed.difference_update_query(["options"]),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping before each checkout: it is one more round trip on every request and every
        # claim (about 2.7 ms of a 22 ms job, measured). After a PostgreSQL restart the first
        # use of a dead connection fails as a disconnect, which invalidates the whole pool:
        # the API answers that one request 503 (Retry-After), a worker retries its task.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, **({"options": options} if options else {})},
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def writing(sessions: sessionmaker[Session], *, one_statement: bool) -> Iterator[Session]:
    """A session whose writes commit when the block ends; ``one_statement``: they are a single
    statement, which then commits on its own (autocommit).

    A transaction of one statement costs BEGIN and COMMIT as round trips of their own: 0.74 ms
    against 0.37 ms for an INSERT here, measured with psycopg. Whether a write is one statement
    is known only to the code that writes it, so only ``jobs/lifecycle``, ``jobs/store`` and
    ``jobs/retention`` call this (a claim, a claim's results, a group of accepted jobs, a
    prune's steps); their callers pass the sessions and never choose (tests/unit/test_layers.py
    checks).
    """
    with sessions.begin() as session:
        if one_statement:  # the connection is taken here, before any statement, in autocommit
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
