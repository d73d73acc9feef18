"""Start, watch and stop a topology of actor processes.

::

    with Launcher(topology, run_dir) as launcher:      # spawn, wait for every ready, start
        for env in launcher.poll(timeout_ms=500):      # heartbeats, stats, log events, ...
            ...
        counters = launcher.request_stats()
    # leaving the block stops every actor: stop, final stats, exit; then SIGTERM, SIGKILL

The run directory receives ``topology.json`` (the topology with every endpoint resolved,
which the actors read), ``sock/`` (ipc sockets), ``logs/<name>.jsonl`` (structured logs)
and ``logs/<name>.out`` (each actor's stdout and stderr, appended across restarts).

Each actor runs as ``sys.executable -m actors.runtime.main ...`` in its own session, so
a terminal's Ctrl-C reaches only the launcher, which then stops the actors in order.
No process is left behind: actors ask the kernel for SIGKILL when the launcher dies
(``PR_SET_PDEATHSIG``; spawn from the main thread, the signal follows the spawning
thread), and each also watches the read end of a pipe whose only write end the
launcher holds (``RXPATH_PARENT_FD``): end of file there means the launcher is gone,
however it died and whatever became of the death signal, and the actor exits at once.
The launcher kills and reaps every child on :meth:`Launcher.stop`, on leaving the
``with`` block for any reason, at interpreter exit, and on SIGTERM/SIGHUP (turned into
``SystemExit`` so the ``with`` block unwinds).

Counters survive restarts: every heartbeat and stats message carries the sender's
counters and its incarnation, and the launcher keeps the last report of each
incarnation (:attr:`Launcher.reports`). :meth:`Launcher.incarnation_history` gives, per
actor, the last report of each incarnation that died, so what a killed process
counted up to its last heartbeat is not lost with it.

tcp:// endpoints use CurveZMQ (:mod:`actors.runtime.curve`): with the topology's
``curve.keys_dir`` when it has one, else with a key pair per actor that the launcher
generates in ``keys/`` of the run directory. ipc sockets live in ``sock/``, mode 0700.

An actor entry with ``"external": true`` is not spawned (a container started it): the
launcher only waits for its ``ready``, starts and stops it.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from actors.runtime import procutil
from actors.runtime.addressing import (
    LAUNCHER,
    actor_names,
    endpoints_from_topology,
    ensure_private_dir,
)
from actors.runtime.curve import (
    CurveContext,
    curve_context,
    generate_keys,
    keys_dir_of,
    load_keys,
    uses_tcp,
)
from actors.runtime.logging import LogSettings, log_path, make_logger, open_log_stream
from actors.runtime.mailbox import DEFAULT_HWM, Mailbox
from protocol import messages as msg
from protocol.envelope import Envelope

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARENT_FD_ENV = "RXPATH_PARENT_FD"   # the actor's end of the launcher-liveness pipe
_PUMP_MS = 100    # longest single wait while pumping (exits also wake us via pidfds)


class ActorStartError(RuntimeError):
    """An actor did not come up; the message names it and shows the tail of its output."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass
class ActorProcess:
    """What the launcher knows of one actor."""

    name: str
    role: str
    instance: int
    external: bool = False
    incarnation: int = 0
    popen: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    ready: bool = False
    returncode: int | None = None
    ended: bool = False           # its end_of_stream (after the final stats) was acked
    pidfd: int | None = None
    exits: dict[int, int] = field(default_factory=dict)  # incarnation -> exit code

    @property
    def running(self) -> bool:
        """Spawned and not yet reaped."""
        return self.popen is not None and self.returncode is None


class Launcher:
    """Spawns the actors of a topology and supervises them; see the module docstring."""

    def __init__(self, topology: Mapping[str, Any], run_dir: str | Path, *,
                 ready_timeout_s: float = 30.0, term_grace_s: float = 3.0,
                 install_signal_handlers: bool = True, python: str = sys.executable,
                 env: Mapping[str, str] | None = None,
                 parent_death_signal: bool = True) -> None:
        self.names = actor_names(topology)
        self.run_dir = Path(run_dir).resolve()
        self.ready_timeout_s = ready_timeout_s
        self.term_grace_s = term_grace_s
        self.python = python
        self.parent_death_signal = parent_death_signal
        self.topology_path = self.run_dir / "topology.json"
        self.endpoints = endpoints_from_topology(topology, self.run_dir)
        # A JSON round trip: a private deep copy, and proof that it serialises.
        self.topology: dict[str, Any] = json.loads(json.dumps(topology))
        self.topology.setdefault("launcher", {})["endpoint"] = \
            self.endpoints[LAUNCHER].to_dict()
        self._procs: dict[str, ActorProcess] = {}
        for name in self.names:
            entry = self.topology["actors"][name]
            if "role" not in entry:
                raise ValueError(f"actor {name!r} has no role")
            entry["endpoint"] = self.endpoints[name].to_dict()
            self._procs[name] = ActorProcess(name, str(entry["role"]),
                                             int(entry.get("instance", 0)),
                                             external=bool(entry.get("external", False)))
        # tcp:// needs keys: a topology of actors we spawn gets a fresh pair per actor in
        # the run directory; external actors must have been given theirs (rxpath compose).
        self._keys_dir = keys_dir_of(self.topology)
        self._make_keys = False
        if self._keys_dir is None and uses_tcp(self.endpoints.values()):
            if any(p.external for p in self._procs.values()):
                raise ValueError("tcp:// endpoints of external actors need CURVE keys: the "
                                 "topology has no curve section (rxpath compose writes one)")
            self._keys_dir = self.run_dir / "keys"
            self.topology["curve"] = {"keys_dir": str(self._keys_dir)}
            self._make_keys = True
        self._curve_ctx: CurveContext | None = None
        runtime = self.topology.get("runtime") or {}
        self._hwm = int(runtime.get("hwm", DEFAULT_HWM))
        base_env = dict(os.environ if env is None else env)
        path = base_env.get("PYTHONPATH")
        base_env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + path if path else "")
        base_env.setdefault("PYTHONUNBUFFERED", "1")
        self._env = base_env
        self._want_signal_handlers = install_signal_handlers
        self._old_signals: dict[int, Any] = {}
        self._mailbox: Mailbox | None = None
        self._log_stream: TextIO | None = None
        self.log: Any = None
        self._pending: list[Envelope] = []
        self._request_ids = itertools.count(1)
        self._stats_wanted: dict[int, dict[str, dict[str, Any]]] = {}
        self._started = False
        self._stopping = False
        self._closed = False
        self.t0_ns: int | None = None
        self.last_counters: dict[str, dict[str, Any]] = {}   # latest heartbeat/stats
        # name -> incarnation -> that incarnation's last heartbeat/stats counters
        self.reports: dict[str, dict[int, dict[str, Any]]] = {}
        # The liveness pipe: children get the read end; the write end stays here only.
        self._parent_pipe: tuple[int, int] | None = None
        self.final_stats: dict[str, dict[str, Any]] = {}     # stats with final=True

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Launcher:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop(timeout_s=10.0 if exc_type is None else 3.0,
                  reason="launcher exit" if exc_type is None else "launcher error")

    def start(self) -> None:
        """Spawn every actor, wait until all are ready, then broadcast ``start``.

        On any failure every spawned process is killed and reaped before the error
        (an :class:`ActorStartError` if an actor did not come up) propagates.
        """
        if self._started:
            raise RuntimeError("launcher already started")
        self._started = True
        try:
            (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
            ensure_private_dir(self.run_dir / "sock")
            if self._make_keys:
                assert self._keys_dir is not None
                generate_keys(self._keys_dir, [LAUNCHER, *self.names])
            self.topology_path.write_text(json.dumps(self.topology, indent=2) + "\n")
            settings = LogSettings.from_dict(self.topology.get("log"))
            self._log_stream = open_log_stream(self.run_dir, LAUNCHER, settings)
            self.log = make_logger(LAUNCHER, role=LAUNCHER, instance=0,
                                   run_dir=self.run_dir, settings=settings,
                                   stream=self._log_stream)
            if self._keys_dir is not None:
                self._curve_ctx = curve_context(
                    load_keys(self._keys_dir, LAUNCHER, self.endpoints), log=self.log)
            self._mailbox = Mailbox(LAUNCHER, self.endpoints, hwm=self._hwm, log=self.log,
                                    ctx=self._curve_ctx)
            self._mailbox.bind()
            self._install_signal_handlers()
            atexit.register(self._close)
            for proc in self._procs.values():
                if not proc.external:
                    self._spawn(proc)
            self._wait_ready(self.names, self.ready_timeout_s)
            self.t0_ns = time.monotonic_ns()
            for name in self.names:
                self._mailbox.send(name, msg.START, {"t0_ns": self.t0_ns})
            self.log.info("started", actors=self.names, pids=self.pids())
        except BaseException:
            self._close()
            raise

    def stop(self, timeout_s: float = 10.0, reason: str = "stop") -> dict[str, int | None]:
        """Stop every actor and reap every child; returns exit codes by name.

        ``stop`` to all, then wait (pumping messages, acknowledging each actor's
        end-of-stream after its final stats) until they exit or ``timeout_s`` passes;
        then SIGTERM the rest, wait ``term_grace_s``; then SIGKILL.
        """
        if self._closed or self._mailbox is None:
            self._close()
            return self.exit_codes()
        self._stopping = True
        try:
            mb = self._mailbox
            deadline = time.monotonic() + timeout_s
            mb.send_deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
            self._reap()
            targets = [p for p in self._procs.values()
                       if p.running or (p.external and p.ready)]
            for proc in targets:
                mb.send(proc.name, msg.STOP, {"reason": reason})

            def finished() -> bool:
                return all((p.ended if p.external else not p.running) for p in targets)

            self._pump_until(finished, deadline)
            self._escalate(signal.SIGTERM, self.term_grace_s)
            self._escalate(signal.SIGKILL, 5.0)
        finally:
            self._close()
        return self.exit_codes()

    def _escalate(self, sig: int, wait_s: float) -> None:
        left = [p for p in self._procs.values() if p.running]
        if not left:
            return
        self.log.warning("escalate", signal=signal.Signals(sig).name,
                         actors=[p.name for p in left])
        for proc in left:
            assert proc.pid is not None
            procutil.signal_group(proc.pid, sig)
        self._pump_until(lambda: not any(p.running for p in left),
                         time.monotonic() + wait_s)

    def _close(self) -> None:
        """Kill and reap whatever still runs, close sockets, restore signal handlers."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        for proc in self._procs.values():
            if proc.running:
                assert proc.pid is not None and proc.popen is not None
                procutil.signal_group(proc.pid, signal.SIGKILL)
        for proc in self._procs.values():
            if proc.popen is not None and proc.returncode is None:
                try:
                    proc.returncode = proc.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:  # unkillable (D state): report, move on
                    sys.stderr.write(f"launcher: {proc.name} (pid {proc.pid}) did not die\n")
            self._close_pidfd(proc)
        if self._mailbox is not None:
            self._mailbox.close()
            self._mailbox = None
        if self._curve_ctx is not None:
            self._curve_ctx.close()
            self._curve_ctx = None
        if self._parent_pipe is not None:
            for fd in self._parent_pipe:
                os.close(fd)
            self._parent_pipe = None
        self._restore_signal_handlers()
        atexit.unregister(self._close)
        if self.log is not None:
            self.log.info("closed", exit_codes=self.exit_codes())
        if self._log_stream is not None and self._log_stream is not sys.stdout:
            self._log_stream.close()
            self._log_stream = None

    # --- what callers use ------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> list[Envelope]:
        """Messages received from the actors (heartbeats, stats, log events, role kinds),
        waiting up to ``timeout_ms`` for the first; also notices child exits."""
        if self._mailbox is not None and not self._closed:
            self._pump(0 if self._pending else timeout_ms)
        out, self._pending = self._pending, []
        return out

    def wait_for(self, predicate: Callable[[Envelope], bool],
                 timeout_s: float) -> Envelope | None:
        """The first received message that satisfies ``predicate``, or None at the
        deadline.  Messages examined before it are consumed."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, env in enumerate(self._pending):
                if predicate(env):
                    del self._pending[:i + 1]
                    return env
            self._pending.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._mailbox is None:
                return None
            self._pump(min(_PUMP_MS, max(1, int(remaining * 1000))))

    def send(self, dest: str, kind: str, body: Mapping[str, Any]) -> bool:
        """Send a message to an actor from the launcher."""
        if self._mailbox is None:
            raise RuntimeError("launcher is not running")
        return self._mailbox.send(dest, kind, body)

    def request_stats(self, names: Iterable[str] | None = None,
                      timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
        """Ask actors for a counters snapshot; returns those that answered in time."""
        if self._mailbox is None:
            raise RuntimeError("launcher is not running")
        wanted = [self._proc(n) for n in (self.names if names is None else names)]
        targets = [p for p in wanted if p.ready and (p.external or p.running)]
        rid = next(self._request_ids)
        got = self._stats_wanted[rid] = {}
        try:
            for proc in targets:
                self._mailbox.send(proc.name, msg.STATS_REQUEST, {"request_id": rid})
            self._pump_until(
                lambda: all(p.name in got or not (p.external or p.running) for p in targets),
                time.monotonic() + timeout_s)
        finally:
            del self._stats_wanted[rid]
        return got

    def kill(self, name: str, sig: int = signal.SIGKILL,
             timeout_s: float | None = 5.0) -> int | None:
        """Send ``sig`` to an actor; wait up to ``timeout_s`` for it to exit (pumping
        messages, so a SIGTERMed actor can hand over its final stats).  Returns its exit
        code, or None if it is still running."""
        proc = self._proc(name)
        if proc.external:
            raise ValueError(f"{name} is external: the launcher cannot signal it")
        self._reap()
        if not proc.running:
            return proc.returncode
        assert proc.pid is not None
        procutil.signal_group(proc.pid, sig)
        self.log.info("kill", actor=name, pid=proc.pid, signal=signal.Signals(sig).name)
        if timeout_s is None:
            return None
        return self.wait_exited([name], timeout_s).get(name)

    def restart(self, name: str, ready_timeout_s: float | None = None) -> int:
        """Kill ``name`` if it runs, start a new incarnation, wait for its ``ready`` and
        send it ``start``; returns the new pid."""
        if self._mailbox is None or self.t0_ns is None:
            raise RuntimeError("launcher is not running")
        proc = self._proc(name)
        if proc.external:
            raise ValueError(f"{name} is external: the launcher cannot restart it")
        if proc.running:
            self.kill(name, signal.SIGKILL)
        if proc.popen is not None:  # a death is recorded even if its reaping timed out
            proc.exits.setdefault(proc.incarnation, proc.returncode
                                  if proc.returncode is not None else -signal.SIGKILL)
        # The old process's queue and numbering die with it.
        self._mailbox.reset_link(name)
        self._mailbox.tracker.forget(name)
        proc.incarnation += 1
        self._spawn(proc)
        self._wait_ready([name], ready_timeout_s or self.ready_timeout_s)
        self._mailbox.send(name, msg.START, {"t0_ns": self.t0_ns})
        assert proc.pid is not None
        return proc.pid

    def wait_exited(self, names: Iterable[str], timeout_s: float) -> dict[str, int]:
        """Wait until the named actors have exited; returns the exit codes of those that
        did within ``timeout_s``."""
        procs = [self._proc(n) for n in names]
        self._pump_until(lambda: not any(p.running for p in procs),
                         time.monotonic() + timeout_s)
        return {p.name: p.returncode for p in procs if p.returncode is not None}

    def exited(self) -> dict[str, int]:
        """Exit codes of the actors whose current incarnation has exited."""
        self._reap()
        return {p.name: p.returncode for p in self._procs.values()
                if p.returncode is not None}

    def exit_codes(self) -> dict[str, int | None]:
        """Every spawned actor's exit code (None: still running)."""
        return {p.name: p.returncode for p in self._procs.values() if p.popen is not None}

    def incarnation_history(self) -> dict[str, list[dict[str, Any]]]:
        """Per actor that lost a process, each dead incarnation's last report: ``{
        "incarnation", "exit", "reported": bool, "role", "runtime"}`` (``reported``
        False and empty counters if it died before its first heartbeat). The current
        incarnation is listed too when it is dead (killed and not restarted)."""
        self._reap()
        out: dict[str, list[dict[str, Any]]] = {}
        for proc in self._procs.values():
            if proc.external:
                continue
            dead = [(inc, rc) for inc, rc in sorted(proc.exits.items())
                    if inc < proc.incarnation or not proc.running]
            for inc, rc in dead:
                report = self.reports.get(proc.name, {}).get(inc)
                out.setdefault(proc.name, []).append({
                    "incarnation": inc, "exit": procutil.describe_exit(rc),
                    "reported": report is not None,
                    "role": (report or {}).get("role") or {},
                    "runtime": (report or {}).get("runtime") or {}})
        return out

    def pid(self, name: str) -> int | None:
        return self._proc(name).pid

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self._procs.values() if p.pid is not None}

    def process(self, name: str) -> ActorProcess:
        return self._proc(name)

    def output_tail(self, name: str, max_bytes: int = 3000) -> str:
        """The last lines of an actor's stdout/stderr and of its structured log."""
        parts = []
        for path in (self._out_path(name), log_path(self.run_dir, name)):
            text = procutil.tail_text(path, max_bytes).rstrip()
            if text:
                parts.append(f"--- {path}\n{text}")
        return "\n".join(parts) or "(no output)"

    # --- internals ---------------------------------------------------------------------------

    def _proc(self, name: str) -> ActorProcess:
        try:
            return self._procs[name]
        except KeyError:
            raise KeyError(f"no actor named {name!r}") from None

    def _out_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.out"

    def _spawn(self, proc: ActorProcess) -> None:
        assert self._mailbox is not None
        cmd = [self.python, "-m", "actors.runtime.main", "--role", proc.role,
               "--instance", str(proc.instance), "--name", proc.name,
               "--topology", str(self.topology_path), "--run-dir", str(self.run_dir),
               "--incarnation", str(proc.incarnation), "--parent-pid", str(os.getpid())]
        if not self.parent_death_signal:
            cmd.append("--no-parent-death-signal")
        if self._parent_pipe is None:
            r, w = os.pipe()   # both non-inheritable: only pass_fds hands r over
            self._parent_pipe = (r, w)
        env = {**self._env, PARENT_FD_ENV: str(self._parent_pipe[0])}
        with open(self._out_path(proc.name), "ab") as out:
            out.write(f"=== {proc.name} incarnation {proc.incarnation}\n".encode())
            out.flush()
            proc.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True, close_fds=True,
                                          pass_fds=(self._parent_pipe[0],))
        proc.pid = proc.popen.pid
        proc.ready = False
        proc.ended = False
        proc.returncode = None
        if hasattr(os, "pidfd_open"):
            try:
                proc.pidfd = os.pidfd_open(proc.pid)
                self._mailbox.add_wake_fd(proc.pidfd, self._reap)
            except OSError:
                proc.pidfd = None  # exits are then noticed by the periodic re-check
        self.log.info("spawned", actor=proc.name, role=proc.role, pid=proc.pid,
                      incarnation=proc.incarnation)

    def _close_pidfd(self, proc: ActorProcess) -> None:
        if proc.pidfd is not None:
            if self._mailbox is not None:
                self._mailbox.remove_wake_fd(proc.pidfd)
            os.close(proc.pidfd)
            proc.pidfd = None

    def _reap(self) -> list[str]:
        """Collect exited children; returns the names that exited since the last call."""
        gone = []
        for proc in self._procs.values():
            if proc.popen is None or proc.returncode is not None:
                continue
            rc = proc.popen.poll()
            if rc is None:
                continue
            proc.returncode = rc
            proc.exits[proc.incarnation] = rc
            proc.ready = False
            self._close_pidfd(proc)
            gone.append(proc.name)
            level = "info" if rc == 0 else "warning"
            getattr(self.log, level)("actor_exited", actor=proc.name, pid=proc.pid,
                                     code=rc, exit=procutil.describe_exit(rc))
        return gone

    def _pump(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for input, absorb what came, reap exits."""
        mb = self._mailbox
        if mb is None:
            return
        mb.poll(timeout_ms)
        while mb.inbound:
            env = mb.inbound.popleft()
            if self._absorb(env):
                self._pending.append(env)
        self._reap()

    def _pump_until(self, done: Callable[[], bool], deadline: float) -> bool:
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._mailbox is None:
                return False
            self._pump(min(_PUMP_MS, max(1, int(remaining * 1000))))
        return True

    def _absorb(self, env: Envelope) -> bool:
        """Launcher bookkeeping for one message; True if the caller should see it."""
        kind, sender, body = env.kind, env.sender, env.body
        proc = self._procs.get(sender)
        if kind == msg.READY:
            if proc is None:
                self.log.warning("ready_from_stranger", sender=sender)
            elif proc.external or body["pid"] == proc.pid:
                proc.ready = True
                if proc.external:
                    proc.pid = body["pid"]
                self.log.info("actor_ready", actor=sender, pid=body["pid"])
            return False
        if kind == msg.HEARTBEAT:
            self._keep_report(sender, body["counters"])
            return True
        if kind == msg.STATS:
            self._keep_report(sender, body["counters"])
            if body["final"]:
                self.final_stats[sender] = body["counters"]
            wanted = self._stats_wanted.get(body.get("request_id", -1))
            if wanted is not None:
                wanted[sender] = body["counters"]
                return False
            return True
        if kind == msg.END_OF_STREAM:
            assert self._mailbox is not None
            self._mailbox.send(sender, msg.END_OF_STREAM_ACK,
                               {"request_id": body["request_id"]})
            if proc is not None:
                proc.ended = True
            return False
        if kind == msg.END_OF_STREAM_ACK:
            return False
        if kind == msg.LOG_EVENT:
            level = body["level"] if body["level"] in ("debug", "info", "warning",
                                                       "error", "critical") else "info"
            getattr(self.log, level)("actor_event", actor=sender, actor_event=body["event"],
                                     **{f"f_{k}": v for k, v in body["fields"].items()})
        return True

    def _keep_report(self, sender: str, counters: dict[str, Any]) -> None:
        runtime = counters.get("runtime")
        inc = runtime.get("incarnation", 0) if isinstance(runtime, dict) else 0
        inc = inc if isinstance(inc, int) else 0
        self.reports.setdefault(sender, {})[inc] = counters
        proc = self._procs.get(sender)
        # A late report of an earlier incarnation must not hide the current one's.
        if proc is None or proc.external or inc >= proc.incarnation:
            self.last_counters[sender] = counters

    def _wait_ready(self, names: Iterable[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = sorted(names)
        while True:
            self._pump(_PUMP_MS if waiting else 0)
            waiting = [n for n in waiting if not self._procs[n].ready]
            if not waiting:
                return
            for name in waiting:
                proc = self._procs[name]
                if proc.popen is not None and proc.returncode is not None:
                    raise ActorStartError(name, (
                        f"actor {name!r} (role {proc.role}) exited before it was ready: "
                        f"{procutil.describe_exit(proc.returncode)}\n"
                        f"{self.output_tail(name)}"))
            if time.monotonic() >= deadline:
                name = waiting[0]
                others = f" (nor did: {', '.join(waiting[1:])})" if waiting[1:] else ""
                raise ActorStartError(name, (
                    f"actor {name!r} (role {self._procs[name].role}) did not become ready "
                    f"within {timeout_s:g} s{others}\n{self.output_tail(name)}"))

    # --- signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if not self._want_signal_handlers:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_signals[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Unwind the caller (its `with` block stops the actors); once stopping, the
        # stop's own deadlines bound the exit.
        if not self._stopping:
            raise SystemExit(128 + signum)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_signals.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old_signals.clear()
