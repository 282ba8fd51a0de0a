"""Several hosts on one machine: each host is a Linux network namespace joined to the root
namespace by one veth pair per link, with an address of its own (10.77.N.2/24 inside, 10.77.N.1
outside). PostgreSQL and Redis run in the root namespace and listen only on the outside ends of
the links (and on 127.0.0.1 for the test), so a host reaches them only over its links.

A fault is a link fault: ``Link.cut`` sets the outside end down, so the inside end loses its
carrier and packets are dropped silently, as when a cable is pulled (a route is not withdrawn,
no error is returned: connections hang, they do not fail). Delay and loss need the kernel's
``sch_netem``; where it is missing (``netem_missing``), ``tests.faults.relay`` delays and drops
in user space. Everything runs as root (``ip netns``); ``Network.close`` deletes every namespace,
and with it every veth, even after a failure, and ``Network()`` removes what a killed run left."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PREFIX = "mlqh"  # namespaces are mlqh<pid>-<host>: the pid tells whether the run that made them lives
SUBNET = "10.77"  # each link takes a free 10.77.N.0/24
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")  # Debian's libfaketime (make faketime)
FAKETIME_SITE = Path(__file__).with_name("faketime_site")  # its sitecustomize keeps time.sleep working


class NetnsUnavailable(RuntimeError):
    """This machine cannot make network namespaces (not root, no ``ip``)."""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why this machine cannot run the multi-host tests, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = sh("ip", "netns", "add", probe, check=False)
    sh("ip", "netns", "del", probe, check=False)
    return None if made.returncode == 0 else f"`ip netns add` failed: {made.stderr.strip()}"


def netem_missing() -> str | None:
    """Why ``tc qdisc … netem`` cannot delay or drop here (e.g. a kernel without sch_netem), or None."""
    if shutil.which("tc") is None:
        return "no `tc` command (iproute2)"
    probe = f"{PREFIX}{os.getpid() % 100000}n"[:15]
    sh("ip", "link", "add", probe, "type", "veth", "peer", "name", f"{probe}p"[:15])
    try:
        added = sh("tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "10ms", "loss", "1%", check=False)
        return None if added.returncode == 0 else f"tc netem: {added.stderr.strip()}"
    finally:
        sh("ip", "link", "del", probe, check=False)


@dataclass
class Link:
    """One veth pair: ``outside`` in the root namespace (where the services listen), ``inside``
    in the host's namespace."""

    host: str
    purpose: str  # what the host reaches over it: "pg", "redis", "clients"
    outside: str  # interface name in the root namespace
    outside_addr: str  # the services' address as the host sees it
    inside_addr: str  # the host's address on this link

    def cut(self) -> None:
        sh("ip", "link", "set", "dev", self.outside, "down")

    def heal(self) -> None:
        sh("ip", "link", "set", "dev", self.outside, "up")

    def is_up(self) -> bool:
        return "state UP" in sh("ip", "link", "show", "dev", self.outside).stdout


@dataclass
class Host:
    name: str
    netns: str
    links: dict[str, Link] = field(default_factory=dict)
    netem_on: bool = False

    def command(self, argv: list[str], *, clock_offset: str | None = None) -> list[str]:
        """``argv`` run on this host; ``clock_offset`` ("+10m", "-10m"): with its wall clock off by
        that much (libfaketime; monotonic clocks are left alone, as a wrong wall clock leaves them;
        PYTHONPATH is ``FAKETIME_SITE`` then)."""
        if clock_offset is None:
            return ["ip", "netns", "exec", self.netns, *argv]
        preload = ["env", f"LD_PRELOAD={FAKETIME_LIB}", f"FAKETIME={clock_offset}", "FAKETIME_DONT_FAKE_MONOTONIC=1",
                   f"PYTHONPATH={FAKETIME_SITE}"]  # fmt: skip
        return ["ip", "netns", "exec", self.netns, *preload, *argv]

    def cut(self, *purposes: str) -> None:
        """Cut the named links (all of them when none is named)."""
        for purpose in purposes or tuple(self.links):
            self.links[purpose].cut()

    def heal(self, *purposes: str) -> None:
        for purpose in purposes or tuple(self.links):
            self.links[purpose].heal()

    def netem(self, *, delay_ms: int, loss_pct: float) -> None:
        """Delay and lose what this host sends, on every link (needs the kernel's sch_netem)."""
        for purpose in self.links:
            sh("ip", "netns", "exec", self.netns, "tc", "qdisc", "replace", "dev", purpose, "root", "netem",
               "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%")  # fmt: skip
        self.netem_on = True

    def clear_netem(self) -> None:
        if self.netem_on:
            for purpose in self.links:
                sh("ip", "netns", "exec", self.netns, "tc", "qdisc", "del", "dev", purpose, "root", check=False)
            self.netem_on = False


class Network:
    """The hosts of one test run. ``close`` kills what still runs in them and deletes them."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        remove_leftovers()
        self.hosts: dict[str, Host] = {}

    def add(self, name: str, links: tuple[str, ...] = ("pg", "redis")) -> Host:
        netns = f"{PREFIX}{os.getpid()}-{name}"
        sh("ip", "netns", "add", netns)
        host = self.hosts[name] = Host(name=name, netns=netns)
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        for purpose in links:
            n = free_subnet()
            outside, outside_addr, inside_addr = f"mlqv{n}", f"{SUBNET}.{n}.1", f"{SUBNET}.{n}.2"
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", purpose, "netns", netns)
            sh("ip", "addr", "add", f"{outside_addr}/24", "dev", outside)
            sh("ip", "-n", netns, "addr", "add", f"{inside_addr}/24", "dev", purpose)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "-n", netns, "link", "set", purpose, "up")
            host.links[purpose] = Link(name, purpose, outside, outside_addr, inside_addr)
        return host

    def outside_addrs(self) -> list[str]:
        return [link.outside_addr for host in self.hosts.values() for link in host.links.values()]

    def heal_all(self) -> None:
        for host in self.hosts.values():
            host.heal()

    def close(self) -> None:
        for host in self.hosts.values():
            kill_all_in(host.netns)
            sh("ip", "netns", "del", host.netns, check=False)  # its veths go with it
        self.hosts.clear()


def free_subnet() -> int:
    """A third octet no address or interface on this machine uses yet."""
    used = {int(n) for n in re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", sh("ip", "-4", "-o", "addr").stdout)}
    names = sh("ip", "-o", "link").stdout
    for n in range(1, 255):
        if n not in used and f"mlqv{n}:" not in names and f"mlqv{n}@" not in names:
            return n
    raise RuntimeError(f"no free {SUBNET}.N.0/24 left")


def kill_all_in(netns: str) -> None:
    """SIGKILL every process still running in ``netns`` (the harness started them all)."""
    for pid in sh("ip", "netns", "pids", netns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def remove_leftovers() -> None:
    """Namespaces of runs that were killed before they could delete them."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = re.fullmatch(rf"{PREFIX}(\d+)-.+", name)
        if found and not psutil.pid_exists(int(found.group(1))):
            kill_all_in(name)
            sh("ip", "netns", "del", name, check=False)
