"""Several hosts on one machine: the API, the workers and the reconcilers each run in a network
namespace of their own and reach PostgreSQL and Redis only over their links (tests/faults/
netns.py); a fault is a link cut, or delay and loss. One deployment serves the module (the
processes start once; each scenario starts on an empty jobs table). Each scenario lands on live
work and prints its figures: lost, duplicate results, stuck running, seconds to recover, and
seconds of wrong answers (what a client reading GET /v1/jobs was told that the record later
contradicts: there must be none). `pytest tests/faults/test_hosts.py -s` prints them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from jobs.settings import Settings
from tests.conftest import Proc
from tests.faults.conftest import LEASE_S, JobState, assert_lost_one_attempt, children, record
from tests.faults.hosts import HostStack, LinkedServices, Watcher, deployment, linked_services, logged
from tests.faults.netns import FAKETIME_LIB, Host, NetnsUnavailable, Network, netem_missing
from tests.services import IN_CI, unavailable

N = 200
HOSTS = {"api": ("pg", "redis", "clients"), "wa": ("pg", "redis"), "wb": ("pg", "redis"), "ra": ("pg", "redis"),
         "rb": ("pg", "redis"), "wc": ("pg", "redis"), "wd": ("pg", "redis")}  # fmt: skip
SKEW = {"wc": "+10m", "wd": "-10m"}  # the clock-skewed workers' hosts, serving the embedding kind
# A cut-off reconciler's lock goes when PostgreSQL's keepalives give its session up (workers/
# reconciler.py: LOCK_KEEPALIVE_*, about 10 s), and a standby takes it at its next round.
TAKEOVER_BOUND_S = 20.0
LATE_WRITE = "a newer attempt owns the job"  # what a worker logs when the attempt fence refuses its write
REDIS_CUT_S = 6.0  # at least: longer than a worker's Redis socket timeout (publish_timeout_s, 2 s), so its ack fails
PUBLISH_FAILED = "publish failed"  # what the API logs when a wake-up could not be sent (producer/publish.py)


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    try:
        net = Network()
    except NetnsUnavailable as exc:
        unavailable(f"several hosts on one machine: {exc}")
    try:
        for name, links in HOSTS.items():
            net.add(name, links)
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def linked(network: Network) -> Iterator[LinkedServices]:
    with linked_services(network) as services:
        yield services


@pytest.fixture(scope="module")
def deployed(linked: LinkedServices, network: Network, settings: Settings) -> Iterator[HostStack]:
    """The API; reconciler a (active), then b (standby); workers a and b of moderation, whose
    links pass through relays (that relay at once until a scenario adds delay and loss); and,
    with libfaketime, workers c and d of embedding on hosts whose clocks are 10 minutes off."""
    hosts = network.hosts
    with deployment(linked, settings, hosts["api"]) as stack:
        stack.relay(hosts["wa"])
        stack.relay(hosts["wb"])
        stack.start_on(hosts["ra"], "reconciler-a", ["reconcile"], MLQ_LOG_LEVEL="INFO")
        ra = hosts["ra"].links["pg"].inside_addr
        stack.wait_until("reconciler a takes the lock", lambda: stack.lock_holder() == ra, timeout_s=90)
        stack.start_on(hosts["rb"], "reconciler-b", ["reconcile"], MLQ_LOG_LEVEL="INFO")
        stack.worker(hosts["wa"], "wa")
        stack.worker(hosts["wb"], "wb")
        if FAKETIME_LIB.exists():
            for name, clock in SKEW.items():
                stack.worker(hosts[name], name, kind="embedding", clock=clock)
        yield stack


@pytest.fixture
def stack(deployed: HostStack, network: Network) -> Iterator[HostStack]:
    network.heal_all()
    deployed.reset()
    try:
        yield deployed
    finally:
        network.heal_all()
        for host in network.hosts.values():
            host.clear_netem()


def running_at(stack: HostStack, worker: str) -> dict[str, JobState]:
    """The claim ``worker`` holds: its jobs as PostgreSQL has them, each running its first attempt."""
    held = stack.holds[worker].held(stack.procs[worker])
    at_fault = stack.jobs(held)
    assert held and {(s, a) for s, a, _, _ in at_fault.values()} == {("running", 1)}, at_fault
    return at_fault


def report_wrong(watcher: Watcher, figures: dict[str, object]) -> None:
    wrong_s = watcher.wrong_s()
    record({"fault": figures["fault"], "wrong_answers_s": wrong_s, "reads": len(watcher.reads),
            "unanswered_reads": watcher.unanswered})  # fmt: skip
    assert watcher.reads, "the watcher read nothing"
    assert wrong_s == 0, f"clients were told something wrong for {wrong_s}s"


def test_worker_cut_off_from_postgres_mid_claim(stack: HostStack, network: Network) -> None:
    """A worker holding leases loses its PostgreSQL link. Its leases expire, the reconciler gives
    the jobs back, another worker runs them; when the link heals, the first worker's late result
    write is refused by the attempt fence: one result each."""
    wa, a = network.hosts["wa"], stack.procs["wa"]
    late_before = logged(a, LATE_WRITE)
    stack.holds["wa"].on()
    with Watcher(stack) as watcher:
        accepted = stack.submit_jobs(N)
        at_fault = running_at(stack, "wa")
        wa.cut("pg")
        fault_at = time.monotonic()
        stack.holds["wa"].off()  # worker a writes its results into the cut link
        ran_s = stack.wait_until("the cut worker's jobs run elsewhere", lambda: stack.succeeded(list(at_fault)), 90)
        wa.heal("pg")
        late = lambda: logged(a, LATE_WRITE) - late_before  # noqa: E731
        refused_s = stack.wait_until("worker a's late write is refused", lambda: late() >= len(at_fault), 90)
        figures = stack.settle(
            accepted, fault_at=fault_at, name="worker cut off from PostgreSQL mid-claim",
            running_at_fault=len(at_fault), ran_elsewhere_s=round(ran_s, 1), late_writes_refused=late(),
            refused_after_heal_s=round(refused_s, 1),
        )  # fmt: skip
    report_wrong(watcher, figures)
    assert_lost_one_attempt(stack, at_fault)  # attempt 1 lost to the lease, attempt 2 stored by worker b
    assert late() == len(at_fault)


def test_worker_cut_off_from_redis_only(stack: HostStack, network: Network) -> None:
    """A worker loses its Redis link mid-claim: it still stores the claim's results in
    PostgreSQL (attempt 1, nothing retried); the other worker and the reconciler see to the rest."""
    wa = network.hosts["wa"]
    for name in ("wa", "wb"):  # both hold a claim: most of the work is still to do at the cut
        stack.holds[name].on()
    with Watcher(stack) as watcher:
        accepted = stack.submit_jobs(N)
        at_fault, other = running_at(stack, "wa"), running_at(stack, "wb")
        messages, queued = stack.messages(kind="moderation"), stack.count("queued")
        wa.cut("redis")
        fault_at = time.monotonic()
        for name in ("wa", "wb"):
            stack.holds[name].off()
        stored_s = stack.wait_until("worker a stores its claim", lambda: stack.succeeded(list(at_fault)), 60)
        stack.wait_settled(120)
        time.sleep(max(0.0, fault_at + REDIS_CUT_S - time.monotonic()))
        cut_s = time.monotonic() - fault_at
        wa.heal("redis")
        resumed = resumes_consuming(stack)
        figures = stack.settle(
            stack.accepted, fault_at=fault_at, name="worker cut off from Redis only",
            running_at_fault=len(at_fault) + len(other), queued_at_fault=queued, messages_at_fault=messages.total,
            stored_while_cut_s=round(stored_s, 1), cut_s=round(cut_s, 1), consumes_after_heal=resumed,
        )  # fmt: skip
    assert stack.procs["wa"].alive(), stack.procs["wa"].tail()
    if not resumed:
        stack.procs.pop("wa").stop(timeout_s=5)  # replaced, as a liveness probe would, for the scenarios after
        stack.worker(wa, "wa")
    report_wrong(watcher, figures)
    assert set(accepted) <= set(stack.accepted)
    for job_id, (status, attempt, history, by) in stack.jobs(list(at_fault)).items():
        assert (status, attempt, history, by) == ("succeeded", 1, [], at_fault[job_id][3]), job_id
    # a worker whose Redis link dropped while it acked a message ("Couldn't ack") takes messages
    # again once it heals (it kept the prefetch slot of the lost ack: workers/redis_acks.py)
    assert resumed, "worker a is alive but takes no messages after the heal"


def resumes_consuming(stack: HostStack, timeout_s: float = 60) -> bool:
    """Whether worker a takes messages again: worker b is held on a claim (it prefetches no more),
    so the wake-ups of a few more jobs wait for worker a. Within a minute: a consumer left on a
    half-open link is reconnected by kombu's BRPOP check within 51 s, and Celery's reconnects
    back off.

    The jobs go in one at a time: the API shares one wake-up among submissions that arrive
    together (producer/intake.py ``_wake``), so eight at once could make a single message,
    which worker b takes, and worker a, consuming all along, would get none (CI saw exactly
    that: worker a sent a BRPOP every second and Redis had nothing for it)."""
    wa = stack.procs["wa"]
    received = logged(wa, "] received")
    stack.holds["wb"].on()
    try:
        stack.submit_jobs(8, threads=1)
        deadline = time.monotonic() + timeout_s
        while logged(wa, "] received") == received and time.monotonic() < deadline:
            time.sleep(0.2)
        return logged(wa, "] received") > received
    finally:
        stack.holds["wb"].off()


def redis_ready(stack: HostStack) -> bool:
    """The API's /readyz finds Redis (it pings through the publisher's own app)."""
    try:
        return httpx.get(f"{stack.url}/readyz", timeout=5).json()["checks"]["redis"] == "ok"
    except httpx.HTTPError:
        return False


def tail(proc: Proc, offset: int) -> list[str]:
    """The lines ``proc`` logged after its log held ``offset`` bytes."""
    return proc.log_path.read_bytes()[offset:].decode(errors="replace").splitlines()


def test_api_cut_off_from_redis(stack: HostStack, network: Network) -> None:
    """The API loses its Redis link: it still accepts (the rows are committed, the wake-ups are
    not sent), the reconciler publishes them; once the link heals the API publishes again."""
    api, proc = network.hosts["api"], stack.procs["api"]
    failed_before = logged(proc, PUBLISH_FAILED)
    with Watcher(stack) as watcher:
        api.cut("redis")
        fault_at = time.monotonic()
        during = stack.submit_jobs(N // 4, threads=16)
        accept_s = time.monotonic() - fault_at
        failed_while_cut = logged(proc, PUBLISH_FAILED) - failed_before
        published_s = stack.wait_until("the reconciler publishes them", lambda: stack.succeeded(during), 90)
        api.heal("redis")
        healed_at = time.monotonic()
        # the link is up; what counts is the API seeing Redis again (its /readyz pings through the
        # publisher's app); a publish racing the link's return may still time out, and that job waits
        # for the reconciler, as those of the cut did
        ready_s = stack.wait_until("the API sees Redis again", lambda: redis_ready(stack), 30)
        log_before = len(proc.log_path.read_bytes())
        after = stack.submit_jobs(N // 4)
        stack.wait_until("the API publishes again", lambda: stack.succeeded(after), 60)
        failed_after_heal = [line for line in tail(proc, log_before) if PUBLISH_FAILED in line]
        figures = stack.settle(
            during + after, fault_at=fault_at, name="API cut off from Redis", accepted_while_cut=len(during),
            accept_while_cut_s=round(accept_s, 1), publishes_failed_while_cut=failed_while_cut,
            ran_while_cut_s=round(published_s, 1), redis_seen_after_heal_s=round(ready_s, 1),
            accepted_after_heal=len(after),
            publishes_failed_after_heal=len(failed_after_heal), ran_after_heal_s=round(time.monotonic() - healed_at, 1),
        )  # fmt: skip
    report_wrong(watcher, figures)
    assert failed_while_cut > 0, figures  # the cut hit publishing
    assert not failed_after_heal, failed_after_heal  # seeing Redis again, it publishes every wake-up
    [(republished,)] = stack.sql("SELECT count(*) FROM jobs WHERE id = ANY(CAST(%s AS uuid[])) AND attempt = 1", during)
    assert republished == len(during)


def test_delay_and_loss_on_every_worker_link(stack: HostStack, network: Network) -> None:
    """200 ms and 5 % loss on what every worker host sends: slower, nothing lost. With the
    kernel's netem on the hosts' interfaces; without it (this VM), the relays on their links."""
    missing = netem_missing()
    print(f"netem: {'absent (' + missing + '): delay and loss by the user-space relays' if missing else 'present'}")
    if missing and IN_CI:
        print("CI=true: the scenario runs on the relays; the kernel's netem is not exercised here")
    workers = [network.hosts["wa"], network.hosts["wb"]]
    for host in workers:
        if missing:
            for relay in stack.relays[host.name].values():
                relay.delay_s, relay.loss = 0.2, 0.05
        else:
            host.netem(delay_ms=200, loss_pct=5)
    with Watcher(stack) as watcher:
        fault_at = time.monotonic()
        accepted = stack.submit_jobs(N)
        figures = stack.settle(accepted, fault_at=fault_at, name="200 ms + 5 % loss on every worker link",
                               method="relay" if missing else "netem", netem=missing or "present",
                               **relay_counts(stack, workers))  # fmt: skip
    report_wrong(watcher, figures)
    assert figures["succeeded"] == N
    if missing:
        # the fault hit live work: chunks were delayed and at least one held back a retransmission
        # timeout (a relay loses its first at its 10th chunk; a run moves 37-95 chunks in all)
        assert figures["chunks_lost"] >= 1 and figures["chunks_delayed"] > figures["chunks_lost"], figures


def relay_counts(stack: HostStack, hosts: list[Host]) -> dict[str, int]:
    relays = [r for host in hosts for r in stack.relays[host.name].values()]
    return {"chunks_delayed": sum(r.counts.chunks for r in relays), "chunks_lost": sum(r.counts.lost for r in relays)}


def test_active_reconciler_cut_off(stack: HostStack, network: Network) -> None:
    """The active reconciler's host is cut off (every link) together with a worker holding a
    claim: only a reconciler can give those jobs back. The standby takes the advisory lock
    within TAKEOVER_BOUND_S and does; the old one, healed, finds its lock gone and stays standby."""
    by_addr = {network.hosts[h].links["pg"].inside_addr: h for h in ("ra", "rb")}
    active = by_addr[stack.lock_holder() or ""]
    standby = "rb" if active == "ra" else "ra"
    old, new = stack.procs[f"reconciler-{active[1]}"], stack.procs[f"reconciler-{standby[1]}"]
    activated_before = logged(old, "this reconciler is active")
    wa, a = network.hosts["wa"], stack.procs["wa"]
    late_before = logged(a, LATE_WRITE)
    stack.holds["wa"].on()
    with Watcher(stack) as watcher:
        accepted = stack.submit_jobs(N)
        at_fault = running_at(stack, "wa")
        network.hosts[active].cut()
        wa.cut()
        fault_at = time.monotonic()
        [(cut_at,)] = stack.sql("SELECT clock_timestamp()")
        stack.holds["wa"].off()
        standby_addr = network.hosts[standby].links["pg"].inside_addr
        takeover_s = stack.wait_until("the standby takes over", lambda: stack.lock_holder() == standby_addr, 60)
        ran_s = stack.wait_until("the cut worker's jobs run elsewhere", lambda: stack.succeeded(list(at_fault)), 90)
        network.hosts[active].heal()
        wa.heal()
        stack.wait_until("the old reconciler finds its lock gone", lambda: logged(old, "lost PostgreSQL") > 0, 60)
        stack.wait_until("worker a's late write is refused", lambda: logged(a, LATE_WRITE) - late_before > 0, 90)
        figures = stack.settle(
            accepted, fault_at=fault_at, name="active reconciler's host cut off", running_at_fault=len(at_fault),
            takeover_s=round(takeover_s, 1), ran_elsewhere_s=round(ran_s, 1), bound_s=TAKEOVER_BOUND_S,
        )  # fmt: skip
    time.sleep(2)  # rounds of the old one, were it acting
    old_addr = network.hosts[active].links["pg"].inside_addr
    [(acted,)] = stack.sql(
        "SELECT count(*) FROM status_writes WHERE client = CAST(%s AS inet) AND written_at > %s", old_addr, cut_at
    )
    record({"fault": figures["fault"], "old_reconciler_writes_after_cut": acted})
    report_wrong(watcher, figures)
    assert acted == 0, f"the cut-off reconciler changed {acted} jobs"
    assert takeover_s < TAKEOVER_BOUND_S, takeover_s
    assert stack.lock_holder() == standby_addr, "the old reconciler took the lock back"
    assert logged(old, "this reconciler is active") == activated_before, old.tail()
    assert logged(new, "this reconciler is active") >= 1
    assert_lost_one_attempt(stack, at_fault)


def host_clock_s(host: Host, clock: str) -> float:
    """The wall clock as a process on ``host`` with ``clock`` reads it, minus ours."""
    argv = host.command(["python3", "-c", "import time; print(time.time())"], clock_offset=clock)
    return float(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout) - time.time()


def test_leases_use_the_database_clock(stack: HostStack, network: Network) -> None:
    """Two worker hosts whose clocks are 10 minutes ahead and behind (libfaketime) hold claims
    for three leases: nothing is taken back (nothing stolen). Then the one ahead dies mid-claim:
    its leases expire on time by PostgreSQL's clock, not 10 minutes late (nothing lost)."""
    if not FAKETIME_LIB.exists():
        unavailable(f"no {FAKETIME_LIB}: `make faketime` installs Debian's faketime")
    offsets = {name: round(host_clock_s(network.hosts[name], clock)) for name, clock in SKEW.items()}
    assert abs(offsets["wc"] - 600) < 5 and abs(offsets["wd"] + 600) < 5, offsets
    for name in SKEW:
        stack.holds[name].on()
    with Watcher(stack, kind="embedding") as watcher:
        accepted = stack.submit_jobs(N // 2, kind="embedding")
        held = {**running_at(stack, "wc"), **running_at(stack, "wd")}
        time.sleep(3 * LEASE_S)  # three leases, renewed by the skewed workers, by PostgreSQL's clock
        kept = {(s, a) for s, a, _, _ in stack.jobs(list(held)).values()}
        assert kept == {("running", 1)}, f"a lease was taken from a live worker: {kept}"
        stack.holds["wd"].off()
        [pool] = children(stack.procs["wc"].popen.pid)
        os.kill(pool, signal.SIGKILL)  # worker c (10 minutes ahead) dies holding its claim
        fault_at = time.monotonic()
        stack.holds["wc"].off()
        died = [job_id for job_id, (_, _, _, by) in held.items() if by == held_by(stack, "wc", held)]
        back_s = stack.wait_until("the dead worker's leases expire", lambda: taken_back(stack, died), 60)
        figures = stack.settle(
            accepted, fault_at=fault_at, name="worker hosts' clocks 10 minutes off", clock_offsets_s=offsets,
            held_three_leases=len(held), taken_back_after_s=round(back_s, 1),
        )  # fmt: skip
    report_wrong(watcher, figures)
    assert back_s < LEASE_S + 5, back_s  # a lease by the worker's clock would have lasted 10 minutes more
    for job_id, (status, attempt, history, _) in stack.jobs([j for j in held if j not in died]).items():
        assert (status, attempt, history) == ("succeeded", 1, []), job_id  # worker d's: kept, stored once
    assert_lost_one_attempt(stack, {j: held[j] for j in died})


def held_by(stack: HostStack, worker: str, held: dict[str, JobState]) -> str | None:
    mine = set(stack.holds[worker].marker.read_text().split())
    return next(by for job_id, (_, _, _, by) in held.items() if job_id in mine)


def taken_back(stack: HostStack, ids: list[str]) -> bool:
    return all(attempt > 1 or status != "running" for status, attempt, _, _ in stack.jobs(ids).values())
