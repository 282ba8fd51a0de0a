"""The throughput benchmark's figures: a mode's measurement, the table of ratios, the machine it
ran on, the median round, the bar chart, and CPU used by each role (bench/throughput.py, bench/pipeline.py)."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Measured:
    mode: str
    items: int
    seconds: float | None  # None: not run (n/a)
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float | None:
        return self.items / self.seconds if self.seconds else None


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2], 1),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "mean": round(statistics.mean(ordered), 1),
    }


def machine(items: int) -> dict[str, Any]:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "")
    return {
        "cores": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "items": items,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),  # others' work on the machine
    }


def table(results: list[Measured]) -> str:
    rates = {r.mode: r.per_s for r in results}

    def ratio(value: float | None, base: float | None) -> str:
        return f"{value / base:.2f}" if value and base else "n/a"

    head = f"{'mode':13} {'items':>6} {'seconds':>8} {'items/s':>8} {'range':>9} {'vs direct':>9} {'vs sorted':>9}"
    lines = [f"{head} {'vs naive':>9}"]
    for r in results:
        seconds = f"{r.seconds:.2f}" if r.seconds else "n/a"
        per_s = f"{r.per_s:.1f}" if r.per_s else "n/a"
        rounds = r.detail.get("rounds_items_per_s") or []
        spread = f"{min(rounds):.0f}-{max(rounds):.0f}" if len(rounds) > 1 else ""
        vs = [ratio(r.per_s, rates.get(base)) for base in ("direct", "direct-sorted", "naive")]
        lines.append(
            f"{r.mode:13} {r.items:>6} {seconds:>8} {per_s:>8} {spread:>9} {vs[0]:>9} {vs[1]:>9} {vs[2]:>9}  {r.note}"
        )
    for r in results:
        for base in ("direct", "direct-sorted"):
            if len(each := r.detail.get(f"rounds_vs_{base}") or []) > 1:
                lines.append(f"{r.mode} vs {base}, round by round: " + ", ".join(f"{x:.2f}" for x in each))
    for r in results:
        if cpu := r.detail.get("cpu_ms_per_job"):
            lines.append(f"{r.mode} CPU ms per job: " + ", ".join(f"{role} {ms}" for role, ms in cpu.items()))
    return "\n".join(lines)


def median_round(rounds: list[Measured]) -> Measured:
    """The round with the median items/s (the lower middle of an even count), with every
    round's items/s in its detail; a mode that did not run (n/a) stays as it is."""
    ran = sorted((r for r in rounds if r.seconds), key=lambda r: r.per_s or 0.0)
    if not ran:
        return rounds[0]
    middle = ran[(len(ran) - 1) // 2]
    middle.detail["rounds_items_per_s"] = [round(r.per_s or 0.0, 2) for r in rounds if r.seconds]
    return middle


def chart(results: list[Measured], path: Path, *, title: str) -> None:
    """A horizontal bar chart of items/s, drawn with Pillow (matplotlib is not installed)."""
    from PIL import Image, ImageDraw

    width, left, bar_h, gap, top = 720, 110, 34, 16, 48
    image = Image.new("RGB", (width, top + len(results) * (bar_h + gap) + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 14), title, fill="black")
    best = max((r.per_s or 0 for r in results), default=0) or 1
    for i, r in enumerate(results):
        y = top + i * (bar_h + gap)
        draw.text((10, y + bar_h // 3), r.mode, fill="black")
        length = int((width - left - 110) * (r.per_s or 0) / best)
        if length:
            draw.rectangle([left, y, left + length, y + bar_h], fill=(70, 110, 180))
        label = f"{r.per_s:.1f} items/s" if r.per_s else "n/a"
        draw.text((left + length + 8, y + bar_h // 3), label, fill="black")
    image.save(path)


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process, summed by role."""
    import psutil

    me = os.getpid()
    used: dict[str, float] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "name"]):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        command = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
        if proc.info["pid"] == me:
            role = "benchmark client"
        elif "mlq api" in command:
            role = "mlq api"
        elif "mlq worker" in command:
            try:
                parent = psutil.Process(proc.info["ppid"]).cmdline()
            except psutil.Error:
                parent = []
            role = "worker pool processes (model)" if "worker" in " ".join(parent) else "worker main process"
        elif "postgres" in command:
            role = "postgresql"
        elif "redis" in command:
            role = "redis"
        else:
            role = "other"
        used[role] = used.get(role, 0.0) + times.user + times.system
    return used
