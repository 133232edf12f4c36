"""`zuulpush edge --workers N`: N edge nodes in N processes on one port, kept running (how they
behave, under signals and systemd too: README, "Multi-core edge").

The supervisor binds the port first (port 0: chooses it; one it cannot bind fails the start) and
keeps that socket bound, not listening, so that the port stays the fleet's while a worker
restarts; then it forks the N workers, worker i being the node `<base>-<i>` on that port with
SO_REUSEPORT. Each worker has two pipes from it: `ready` (one line once it serves) and a
lifeline (its end: the supervisor is gone, drain and exit). A worker that exits is forked again
under its id (`Backoff`); SIGTERM or SIGINT is forwarded to every worker.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn

from zuulpush.binding import ListenError, listening

log = logging.getLogger("zuulpush.supervisor")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
STABLE_S = 10.0
START_TIMEOUT_S = 60.0
"""How long the N workers may take to be first ready."""
STOP_GRACE_S = 15.0
"""Past the drain window and a heartbeat interval: a worker's own shutdown (unregistering)."""


@dataclass(slots=True)
class Backoff:
    """When to fork a worker again after it exited (sans I/O: times are given)."""

    first_s: float = FIRST_DELAY_S
    max_s: float = MAX_DELAY_S
    stable_s: float = STABLE_S
    quick_exits: int = 0

    def delay_after(self, ran_s: float) -> float:
        """The wait before the next fork of a worker that exited after running `ran_s`: none
        after a stable run, else doubling with each quick exit in a row."""
        if ran_s >= self.stable_s:
            self.quick_exits = 0
            return 0.0
        delay = min(self.max_s, self.first_s * 2 ** self.quick_exits)
        self.quick_exits += 1
        return delay


@dataclass(frozen=True, slots=True)
class Slot:
    """What a worker process is told: which node it is, where to listen, and its two pipes."""

    index: int
    node_id: str
    port: int
    ready_fd: int
    lifeline_fd: int

    def ready(self) -> None:
        """Tell the supervisor this worker serves (once)."""
        os.write(self.ready_fd, b"ready\n")
        os.close(self.ready_fd)


RunWorker = Callable[[Slot], int]
"""Runs one worker in the forked process until it is done; returns its exit status."""


@dataclass(slots=True)
class Worker:
    index: int
    node_id: str
    backoff: Backoff = field(default_factory=Backoff)
    pid: int = 0
    started: float = 0.0
    ready_fd: int = -1  # read end of the worker's ready pipe
    lifeline_fd: int = -1  # write end of its lifeline (the worker sees EOF when it closes)
    ready: bool = False
    restarts: int = 0
    last_exit: str = ""
    fork_at: float | None = None  # a fork due at this time (after an exit)


class Supervisor:
    """N workers (module docstring). `run()` returns the supervisor's exit status."""

    def __init__(self, workers: int, base_node_id: str, host: str, port: int,
                 run_worker: RunWorker, *, stop_timeout_s: float,
                 announce: Callable[[list[Worker], int], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`announce(workers, port)` is the banner printed once all are ready (its last line
        the `ready:` line); `stop_timeout_s` bounds the wait for the workers after a SIGTERM
        (the drain window plus a heartbeat interval plus their shutdown)."""
        if workers < 1:
            raise ValueError("edge_workers must be at least 1")
        self.workers = [Worker(i, f"{base_node_id}-{i}") for i in range(1, workers + 1)]
        self.host = host
        self.port = port
        self._run_worker = run_worker
        self._stop_timeout_s = stop_timeout_s
        self._announce = announce
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._reserved: socket.socket | None = None
        self._signals = 0
        self._forwarded = 0
        self._stop_deadline: float | None = None
        self._announced = False
        self.failed = False

    # the main loop

    def run(self) -> int:
        try:
            self._reserve_port()
            self._install_signals()
            gc.freeze()  # what is loaded now is shared with the workers, not copied by the GC
            for worker in self.workers:
                self._fork(worker)
            start_deadline = self._clock() + START_TIMEOUT_S
            while not self._done():
                self._step(start_deadline)
            return 1 if self.failed else 0
        finally:
            self._kill_all()
            self._release()

    def _done(self) -> bool:
        return self._stop_deadline is not None and not any(w.pid for w in self.workers)

    def _step(self, start_deadline: float) -> None:
        now = self._clock()
        if not self._announced and self._stop_deadline is None and now >= start_deadline:
            log.error("the workers were not all ready within %.0f s", START_TIMEOUT_S)
            self._fail()
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._kill_stragglers()
        for key, _ in self._selector.select(self._timeout(now, start_deadline)):
            if key.fd == self._wake_r:
                self._read_wakeups()
            else:
                self._read_ready(key.data)
        self._handle_signals()
        self._reap()
        self._fork_due()

    def _timeout(self, now: float, start_deadline: float) -> float:
        times = [w.fork_at for w in self.workers if w.fork_at is not None]
        times.append(self._stop_deadline if self._stop_deadline is not None else start_deadline)
        return max(0.0, min(min(times) - now, 1.0))

    # workers

    def _fork(self, worker: Worker) -> None:
        ready_r, ready_w = os.pipe()
        lifeline_r, lifeline_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(lifeline_w)
            self._child(Slot(worker.index, worker.node_id, self.port, ready_w, lifeline_r))
        os.close(ready_w)
        os.close(lifeline_r)
        os.set_blocking(ready_r, False)
        worker.pid, worker.started, worker.ready = pid, self._clock(), False
        worker.ready_fd, worker.lifeline_fd, worker.fork_at = ready_r, lifeline_w, None
        self._selector.register(ready_r, selectors.EVENT_READ, worker)
        log.info("worker %s forked: pid %d", worker.node_id, pid)

    def _child(self, slot: Slot) -> NoReturn:
        """The forked worker: its own process group, default signals, none of the supervisor's
        descriptors but its two pipes; runs the worker and exits without returning."""
        code = 1
        try:
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._close_inherited()
            code = self._run_worker(slot)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _close_inherited(self) -> None:
        self._selector.close()
        for fd in (self._wake_r, self._wake_w,
                   *(w.ready_fd for w in self.workers), *(w.lifeline_fd for w in self.workers)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._reserved is not None:
            self._reserved.close()

    def _read_ready(self, worker: Worker) -> None:
        try:
            data = os.read(worker.ready_fd, 64)
        except BlockingIOError:
            return
        if data.startswith(b"ready") and not worker.ready:
            worker.ready = True
            self._on_ready(worker)
        if not data or worker.ready:  # nothing more comes on it
            self._close_ready_pipe(worker)

    def _on_ready(self, worker: Worker) -> None:
        log.info("worker %s (pid %d) serving", worker.node_id, worker.pid)
        if self._announced:
            print(f"  restarted: node={worker.node_id} pid={worker.pid} "
                  f"after={worker.last_exit}", flush=True)
        elif self._stop_deadline is None and all(w.ready for w in self.workers):
            self._announced = True
            print(self._announce(self.workers, self.port), flush=True)

    def _close_ready_pipe(self, worker: Worker) -> None:
        if worker.ready_fd >= 0:
            self._selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is not None:
                self._exited(worker, os.waitstatus_to_exitcode(status))

    def _exited(self, worker: Worker, code: int) -> None:
        ran_s = self._clock() - worker.started
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        worker.last_exit = how.replace(" ", ":")
        worker.pid = 0
        self._close_ready_pipe(worker)
        os.close(worker.lifeline_fd)
        worker.lifeline_fd = -1
        if self._stop_deadline is not None:
            if code != 0:
                self.failed = True
            log.info("worker %s exited (%s)", worker.node_id, how)
            return
        if not self._announced:
            log.error("worker %s exited (%s) before all workers were ready", worker.node_id, how)
            self._fail()
            return
        delay = worker.backoff.delay_after(ran_s)
        worker.restarts += 1
        worker.fork_at = self._clock() + delay
        log.warning("worker %s exited (%s) after %.1f s; forking it again in %.1f s "
                    "(restart %d)", worker.node_id, how, ran_s, delay, worker.restarts)

    def _fork_due(self) -> None:
        if self._stop_deadline is not None:
            return
        now = self._clock()
        for worker in self.workers:
            if worker.fork_at is not None and worker.fork_at <= now:
                self._fork(worker)

    # stopping

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda sig, frame: None)  # wakes the select

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1

    def _read_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _handle_signals(self) -> None:
        while self._forwarded < self._signals:
            self._forwarded += 1
            if self._stop_deadline is None:
                log.warning("stopping: every worker drains (SIGTERM)")
                self._stop_deadline = self._clock() + self._stop_timeout_s
            else:
                log.warning("a second signal: the workers cut their drains short")
            self._signal_workers(signal.SIGTERM)

    def _fail(self) -> None:
        self.failed = True
        if self._stop_deadline is None:
            self._stop_deadline = self._clock() + self._stop_timeout_s
            self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            worker.fork_at = None
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    def _kill_stragglers(self) -> None:
        for worker in self.workers:
            if worker.pid:
                log.error("worker %s (pid %d) still running after %.0f s: killing it",
                          worker.node_id, worker.pid, self._stop_timeout_s)
                self.failed = True
        self._signal_workers(signal.SIGKILL)
        self._stop_deadline = self._clock() + 5.0  # reaped at the next steps

    def _kill_all(self) -> None:
        """Leave no worker behind, whatever ended the loop (an exception included)."""
        live = [w for w in self.workers if w.pid]
        if not live:
            return
        self._signal_workers(signal.SIGKILL)
        for worker in live:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
            worker.pid = 0

    def _release(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for worker in self.workers:
            self._close_ready_pipe(worker)
            if worker.lifeline_fd >= 0:
                os.close(worker.lifeline_fd)
                worker.lifeline_fd = -1
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._reserved is not None:
            self._reserved.close()

    # the port

    def _reserve_port(self) -> None:
        """Bind the port now (port 0: choose it) and keep it bound (SO_REUSEPORT, not listening:
        the kernel gives connections only to the workers' listening sockets); `ListenError`
        when it cannot be bound."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with listening("the edge (--port)", self.host, self.port):
                sock.bind(address)
        except ListenError:
            sock.close()
            raise
        self._reserved = sock
        self.port = int(sock.getsockname()[1])


__all__ = ["Backoff", "RunWorker", "Slot", "Supervisor", "Worker"]
