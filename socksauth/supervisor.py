"""`Supervisor`: the parent of `serve --workers N`. It forks the workers, restarts one that
dies, and turns the signals it is sent into the workers' signals, one at a time in its loop."""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from socksauth import app, logs, metrics
from socksauth.config import ListenAddress, Settings, verify_threads
from socksauth.errors import ConfigError
from socksauth.logs import get_logger
from socksauth.server.admin import bind_admin_socket
from socksauth.server.listener import ProxyServer, bind_listeners

# The supervisor's lines keep the name they have always had in the log.
log = get_logger("app")

# What the supervisor handles: stop (SIGINT, SIGTERM), hurry (SIGQUIT), reload (SIGHUP).
SUPERVISOR_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP})
# What its loop waits for: one of those, or a worker that exited.
_AWAITED = SUPERVISOR_SIGNALS | {signal.SIGCHLD}

# A worker that dies sooner than this after its start is not restarted: it would only die again
# (bad settings, a database that refuses us); the supervisor stops and reports instead.
WORKER_MIN_UPTIME_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class _Worker:
    index: int
    started: float  # time.monotonic() at its fork


class Supervisor:
    """Run ``workers`` processes that share the listening ports (SO_REUSEPORT); supervise them.

    The parent binds every socket once (so port 0 means the same port for all), forks the
    workers, restarts one that dies unexpectedly, and returns the exit code once all have
    exited. Each worker has its own event loop, database pool and audit node name
    (``NODE/wN``), so crash recovery of one never touches another's rows.

    Signals to the parent: SIGTERM/SIGINT → SIGTERM to every worker (graceful shutdown); the
    second → SIGQUIT (close everything now); the third → SIGKILL. SIGQUIT → SIGQUIT. SIGHUP:
    the parent checks ``reload_settings()`` and, when valid, forwards SIGHUP; each worker
    reloads itself and binds new listen addresses with SO_REUSEPORT.

    The parent runs no event loop and installs no signal handler: its signals stay blocked and
    its one loop takes them from the kernel's queue (``sigwaitinfo``), with SIGCHLD for the
    workers that exit, so everything it does happens in that loop and never inside a handler.

    ``min_uptime``: a worker that fails sooner after its start stops everything (exit code 1)
    instead of being restarted.
    """

    def __init__(
        self,
        settings: Settings,
        workers: int,
        reload_settings: Callable[[], Settings] | None = None,
        *,
        min_uptime: float = WORKER_MIN_UPTIME_SECONDS,
    ) -> None:
        self._settings = settings
        self._workers = workers
        self._reload_settings = reload_settings
        self._min_uptime = min_uptime
        self._children: dict[int, _Worker] = {}  # by pid
        self._socket_sets: list[list[socket.socket]] = []  # by worker index
        self._admin_socket: socket.socket | None = None
        self._stop_signals = 0
        self._stopping = False
        # A worker started after a reload reloads at once: it was forked with the first settings.
        self._reloaded = False
        self._exit_code = 0
        # The signal mask to give back at the end, and to the workers at their start.
        self._unblocked: set[int | signal.Signals] = set()

    def run(self) -> int:
        """Serve until every worker has exited; the exit code for the process."""
        # Blocked before the port is announced: a signal sent as soon as it is logged must not
        # meet its default action (SIGHUP's and SIGQUIT's end the process); it waits for the loop.
        self._unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _AWAITED)
        metrics_directory = None
        try:
            app.run(_check_database(self._settings.database_url))
            self._socket_sets = bind_listeners(self._settings, self._workers)
            bound = tuple(
                ListenAddress(host=sock.getsockname()[0], port=sock.getsockname()[1])
                for sock in self._socket_sets[0]
            )
            for address in bound:
                log.info("listening on %s (%d workers)", address, self._workers)
            # What a restarted worker binds: the real ports, also where the settings said 0.
            rebind_settings = dataclasses.replace(self._settings, listen=bound)
            # The admin listener: one socket, kept open here so that a restarted worker serves
            # it too; each worker's metrics go to files in one directory, summed by whichever
            # answers.
            if self._settings.admin_listen is not None:
                self._admin_socket = bind_admin_socket(self._settings.admin_listen)
                metrics_directory = Path(tempfile.mkdtemp(prefix="socksauth-metrics-"))
                metrics.use_multiprocess_directory(metrics_directory)
            # The workers share what the supervisor built (the imported modules, mostly)
            # copy-on-write; a full collection in a worker would write every one of those
            # objects' GC headers and so copy their pages (~10 MiB per worker, soon after the
            # first thousand tunnels).
            gc.freeze()
            for index in range(self._workers):
                self._take_pending_signals()
                if self._stopping:
                    break
                self._start(index)
            for sockets in self._socket_sets:
                for sock in sockets:
                    sock.close()  # the workers hold their own copies
            while self._children:
                received = signal.sigwaitinfo(_AWAITED).si_signo
                if received == signal.SIGCHLD:
                    self._reap(rebind_settings, metrics_directory)
                else:
                    self._handle(signal.Signals(received))
            return self._exit_code
        finally:
            if self._admin_socket is not None:
                self._admin_socket.close()
            if metrics_directory is not None:
                shutil.rmtree(metrics_directory, ignore_errors=True)
            # What came after the last worker exited has nothing left to act on.
            while signal.sigtimedwait(_AWAITED, 0) is not None:
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, self._unblocked)

    def _take_pending_signals(self) -> None:
        """Handle the signals that came before the workers were started (a stop means none is)."""
        while (info := signal.sigtimedwait(SUPERVISOR_SIGNALS, 0)) is not None:
            self._handle(signal.Signals(info.si_signo))

    def _handle(self, signum: signal.Signals) -> None:
        if signum == signal.SIGHUP:
            self._reload()
        else:
            self._stop(signum)

    def _stop(self, signum: signal.Signals) -> None:
        self._stopping = True
        self._stop_signals = max(self._stop_signals + 1, 2 if signum == signal.SIGQUIT else 1)
        if self._stop_signals == 1:
            to_workers = signal.SIGTERM
        elif self._stop_signals == 2:
            log.warning("%s: the workers close every connection now", signum.name)
            to_workers = signal.SIGQUIT
        else:
            log.warning("%s: killing the workers", signum.name)
            to_workers = signal.SIGKILL
            self._exit_code = 128 + signum
        self._signal_workers(to_workers)

    def _reload(self) -> None:
        if self._stopping:
            return
        if self._reload_settings is not None:
            try:
                new = self._reload_settings()
            except (ConfigError, OSError) as error:
                log.error("reload failed, the settings in force stay: %s", error)
                return
            logs.configure(new.log_level, new.log_format)
        self._reloaded = True
        self._signal_workers(signal.SIGHUP)

    def _signal_workers(self, signum: signal.Signals) -> None:
        for pid in self._children:
            os.kill(pid, signum)

    def _reap(self, rebind_settings: Settings, metrics_directory: Path | None) -> None:
        """Every worker that has exited (one SIGCHLD may stand for several)."""
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            worker = self._children.pop(pid)
            if metrics_directory is not None:
                metrics.forget_process(metrics_directory, pid)
            self._exited(worker, os.waitstatus_to_exitcode(status), rebind_settings)

    def _exited(self, worker: _Worker, code: int, rebind_settings: Settings) -> None:
        if self._stopping or code == 0:
            self._exit_code = self._exit_code or (code if code > 0 else 0)
            return
        if time.monotonic() - worker.started < self._min_uptime:
            log.error("worker %d exited with %d right after starting; stopping", worker.index, code)
            self._exit_code = 1
            self._stopping = True
            self._signal_workers(signal.SIGTERM)
            return
        log.error("worker %d exited with %d; restarting it", worker.index, code)
        # The listening sockets were closed in the parent: a restarted worker binds anew on
        # the same port, which SO_REUSEPORT allows while the others keep serving.
        self._socket_sets[worker.index] = bind_listeners(rebind_settings, 1)[0]
        self._start(worker.index)
        for sock in self._socket_sets[worker.index]:
            sock.close()

    def _start(self, index: int) -> None:
        # The supervisor's signals are blocked here, so none can come between the fork and
        # the bookkeeping (nor, in the worker, before its own handlers are set).
        pid = os.fork()
        if pid == 0:
            self._run_worker(index)
        self._children[pid] = _Worker(index, time.monotonic())

    def _run_worker(self, index: int) -> NoReturn:
        code = 1
        try:
            # Ctrl-C reaches the whole process group; the supervisor decides what it means
            # for the workers (SIGTERM, SIGQUIT the second time, then SIGKILL).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGQUIT, signal.SIG_DFL)
            # A reload asked for before the worker's loop handles SIGHUP is done as soon as
            # the worker has started (as after a reload that preceded its fork).
            reload_pending = self._reloaded

            def note_reload(signum: int, frame: object) -> None:
                nonlocal reload_pending
                reload_pending = True

            signal.signal(signal.SIGHUP, note_reload)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._unblocked)
            for other, sockets in enumerate(self._socket_sets):
                if other != index:
                    for sock in sockets:
                        sock.close()
            worker_reload = None
            if self._reload_settings is not None:
                worker_reload = functools.partial(
                    _worker_settings, self._reload_settings, index, self._workers
                )

            async def catch_up(server: ProxyServer) -> None:
                if reload_pending:
                    await app.reload_server(server, worker_reload)

            app.run(
                app.serve(
                    _for_worker(self._settings, index, self._workers),
                    on_ready=catch_up,
                    listen_sockets=self._socket_sets[index],
                    signals=(signal.SIGTERM,),
                    reload_settings=worker_reload,
                    repeat_hurries=False,
                    admin_socket=self._admin_socket,
                )
            )
            code = 0
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)


def _for_worker(settings: Settings, index: int, workers: int) -> Settings:
    """A worker's settings: its own audit node name and its share of the verification threads."""
    return dataclasses.replace(
        settings,
        node_name=f"{settings.node_name}/w{index}",
        password_verify_threads=verify_threads(settings.password_verify_threads, workers),
    )


def _worker_settings(reload_settings: Callable[[], Settings], index: int, workers: int) -> Settings:
    """What a worker reloads: the settings read again, made that worker's."""
    return _for_worker(reload_settings(), index, workers)


async def _check_database(database_url: str) -> None:
    async with app.current_engine(database_url):
        pass
