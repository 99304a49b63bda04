"""Telling a user's interrupt from a component's: SIGINT and SIGTERM set a flag, then raise
KeyboardInterrupt. A KeyboardInterrupt or SystemExit with the flag unset was raised by code (a
component calling ``sys.exit()``), which fails that case only; with the flag set, the run stops.

Also: child processes that die with their parent (``PR_SET_PDEATHSIG`` on Linux, and a thread that
polls the parent pid everywhere), so no worker outlives a ``kill -9`` of the driver.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

_received: list[int] = []


def _handler(signum, frame):  # noqa: ARG001
    first = not _received
    _received.append(signum)
    if first:  # later signals must not break the clean-up the first one started
        raise KeyboardInterrupt(signal.Signals(signum).name)


def received() -> bool:
    """Whether this process got SIGINT or SIGTERM since ``install()``."""
    return bool(_received)


def install() -> dict:
    """Route SIGINT and SIGTERM through the flagging handler; returns the old handlers."""
    _received.clear()
    return {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}


def restore(old: dict) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this (child) process exit when ``parent_pid`` dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()
