"""``sqlbridge worker --processes N``: N worker processes under one supervisor, for the cores of
one machine (one Python process uses one core for its own work, whatever its thread count).

The workers share nothing but the database, which already coordinates them (claims, leases,
schedules), so the supervisor only keeps N of them running:

- each child is ``python -m sqlbridge worker`` with the same options, minus ``--processes``,
  in its own session, so a terminal's Ctrl-C reaches the supervisor alone and every child
  gets each signal exactly once;
- SIGTERM and SIGINT are forwarded to every child, which stops cleanly (no new claims, calls
  in flight finish and are written); the supervisor waits for them and exits 0;
- a child that dies while the supervisor is not stopping is started again after a back-off
  (1 s, doubling up to 60 s; back to 1 s once a child has run for a minute), so a crash loop
  costs little and a one-off crash is repaired at once;
- a child that exits with the usage or configuration exit code (2, 3) stops everything with
  that code: starting it again could not help;
- with ``--once`` children are not restarted after a clean exit; the supervisor exits when
  all are done, with the worst exit code.

If the supervisor itself is killed with SIGKILL its children keep running until stopped; run it
under something that stops the whole group (systemd, Docker, Kubernetes all do).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import click
from click.core import ParameterSource

log = logging.getLogger("sqlbridge.supervisor")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
# A child that ran this long before dying starts the back-off again from BACKOFF_START.
HEALTHY_AFTER = 60.0
FATAL_EXIT_CODES = (2, 3)  # usage, configuration (sqlbridge.cli_support)
_TICK = 0.2


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    backoff: float = BACKOFF_START
    done: bool = False  # --once: exited cleanly, not to be restarted
    exit_code: int = 0


def child_args(ctx: click.Context, exclude: Sequence[str] = ("processes",)) -> list[str]:
    """The options the command was given, as a child's command line: every option set on the
    command line (not defaults or environment variables, which the child inherits), except
    ``exclude``."""
    out: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in exclude or param.name is None:
            continue
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(param.name)
        name = max(param.opts, key=len)
        if param.is_flag:
            if value:
                out.append(name)
        elif param.multiple:
            for v in value or ():
                out += [name, str(v)]
        elif value is not None:
            out += [name, str(value)]
    return out


class Supervisor:
    def __init__(self, processes: int, args: Sequence[str], *, once: bool = False,
                 python: str = sys.executable) -> None:
        self.command = [python, "-m", "sqlbridge", "worker", *args]
        self.once = once
        self.slots = [_Slot(i) for i in range(processes)]
        self._stop = threading.Event()
        self._signals: list[int] = []
        self.restarts = 0

    def _start(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(self.command, start_new_session=True)
        slot.started = time.monotonic()
        log.info("worker process %d started (pid %d)", slot.index, slot.proc.pid)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    slot.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to every child and stop restarting them."""
        self._stop.set()
        self._forward(signum)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: forwarding to %d worker processes", signum, len(self.slots))
        self.stop(signum)

    def run(self, install_handlers: bool = True) -> int:
        if install_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        for slot in self.slots:
            self._start(slot)
        fatal: int | None = None
        while True:
            running = 0
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is not None:
                    code = slot.proc.poll()
                    if code is None:
                        running += 1
                        continue
                    if code in FATAL_EXIT_CODES and fatal is None and not self._stop.is_set():
                        log.error("worker process %d exited with code %d (usage or "
                                  "configuration): stopping all", slot.index, code)
                        fatal = code
                        self.stop()
                    self._exited(slot, code, now)
                if (slot.proc is None and not slot.done and not self._stop.is_set()
                        and now >= slot.restart_at):
                    self.restarts += 1
                    self._start(slot)
                    running += 1
            waiting = any(s.proc is None and not s.done for s in self.slots)
            if running == 0 and (self._stop.is_set() or not waiting):
                break
            time.sleep(_TICK)
        if fatal is not None:
            return fatal
        return max((s.exit_code for s in self.slots), default=0)

    def _exited(self, slot: _Slot, code: int, now: float) -> None:
        slot.proc = None
        if self._stop.is_set():
            slot.done = True
            # A child stopped by our forwarded signal exits 0; one killed by it, -signum.
            slot.exit_code = 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code
            return
        if self.once and code == 0:
            slot.done = True
            return
        if now - slot.started >= HEALTHY_AFTER:
            slot.backoff = BACKOFF_START
        slot.restart_at = now + slot.backoff
        log.warning("worker process %d exited with code %d; starting it again in %.0f s",
                    slot.index, code, slot.backoff)
        slot.exit_code = code if code > 0 else 1
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
