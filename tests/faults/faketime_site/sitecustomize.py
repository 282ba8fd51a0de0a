"""Loaded (as ``sitecustomize``) by the processes the multi-host tests run with a skewed clock.

libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 answers Python's ``time.sleep``
(clock_nanosleep on CLOCK_MONOTONIC, TIMER_ABSTIME) with EINVAL, and with the monotonic clock
faked too, every timed lock wait hangs. So the monotonic clock stays real and ``time.sleep``
waits on an event (a timed lock wait, which works). Only the wall clock is off, as on a host
whose clock is wrong."""

from __future__ import annotations

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
