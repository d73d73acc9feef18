"""The process shell every role runs in.

An :class:`Actor` owns a :class:`~actors.runtime.mailbox.Mailbox` (ROUTER inbox, one
DEALER per destination, blocking back-pressure), a :class:`TimerQueue`, and the
lifecycle every role shares:

1. bind the inbox, connect the outboxes named in ``peers`` (at ``start``, when every
   actor is bound, unless it is an ipc inbox that is bound already), send ``ready``;
2. wait for ``start``: until then only control messages are served and anything else
   is held back (another actor may have started a moment earlier), then replayed;
3. run: decode, dispatch to the role's handlers with ``now = time.monotonic_ns()``, fire
   timers, send a ``heartbeat`` with a counters snapshot every ``heartbeat_ms``, answer
   ``stats_request`` with ``stats``;
4. stop on ``stop`` from the launcher, or on SIGTERM/SIGINT: finish the current message,
   call :meth:`Actor.on_stop`, send the final ``stats`` (``final=True``), then an
   ``end_of_stream`` to the launcher, and close once it is acknowledged (or the drain
   deadline passes).  The exit code is 0.

A malformed message, an unknown kind, a kind the role has no handler for, or one a
handler refuses (:class:`RejectMessage`) is counted under
``transport.rejected_messages[reason]``, logged, and the loop carries on.  An exception
escaping a handler is a bug in the role: it is logged, reported to the launcher as a
``log_event`` and the process exits with :data:`EX_SOFTWARE`.

A role subclass only writes handlers and hooks::

    class Echo(Actor):
        role = "echo"

        @handles(PING)
        def on_ping(self, env: Envelope, now: int) -> None:
            self.pings += 1
            self.send(env.sender, PONG, {"request_id": env.body["request_id"]})

        def counters(self) -> dict[str, Any]:
            return {"pings": self.pings}

Handlers can also be listed as a class attribute, ``HANDLERS = {PING: "on_ping"}``.
Hooks: :meth:`on_start`, :meth:`next_deadline` / :meth:`on_timer`, :meth:`on_stop`,
:meth:`on_end_of_stream`, :meth:`counters`.  Timers: :meth:`call_at` /
:meth:`call_later`, both cancellable.
"""

from __future__ import annotations

import functools
import gc
import heapq
import itertools
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from actors.runtime.addressing import (
    LAUNCHER,
    Endpoint,
    endpoints_from_topology,
    ensure_private_dir,
    ipc_path,
    validate_name,
)
from actors.runtime.cpuprofile import CPU_PROFILE_ENV, CpuSampler
from actors.runtime.curve import CurveKeys, curve_context, keys_for
from actors.runtime.logging import LogSettings, make_logger
from actors.runtime.mailbox import DEFAULT_HWM, Mailbox
from actors.runtime.procutil import settle_heap
from actors.runtime.supervisor import PEER_EVENT
from actors.runtime.trace import TraceWriter, clock_domain, trace_path, tracing_enabled
from protocol import messages as msg
from protocol.envelope import BUNDLE, KINDS, Envelope, MalformedMessage

EX_SOFTWARE = 70                      # sysexits.h: internal software error
EX_TEMPFAIL = 75                      # sysexits.h: the launcher went away
PARENT_FD_ENV = "RXPATH_PARENT_FD"    # read end of the launcher's liveness pipe
DEFAULT_HEARTBEAT_MS = 1000
DEFAULT_STOP_DRAIN_MS = 2000
MAX_IDLE_POLL_MS = 1000               # wake at least this often even with nothing due
DISPATCH_BURST = 256                  # messages handled between two timer checks
# A timer that fires more than this after its deadline is remembered (the poll timeout is
# a whole number of ms, rounded up, so up to 1 ms late is the loop's normal).
TIMER_LATE_NS = 1_000_000
LATE_TIMERS_KEPT = 32

Handler = Callable[[Envelope, int], None]
TimerCallback = Callable[[int], None]
_F = TypeVar("_F", bound=Callable[..., Any])

# Kinds the runtime itself serves; a role cannot register handlers for them.
RUNTIME_KINDS = frozenset({msg.START, msg.STOP, msg.STATS_REQUEST,
                           msg.END_OF_STREAM, msg.END_OF_STREAM_ACK, BUNDLE})


def peak_rss_kb() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss, which Linux
    carries over from the parent across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def handles(*kinds: str) -> Callable[[_F], _F]:
    """Mark a method ``(self, env, now) -> None`` as the handler for ``kinds``."""
    if not kinds:
        raise TypeError("handles() needs at least one message kind")

    def mark(fn: _F) -> _F:
        fn._rx_handles = (*getattr(fn, "_rx_handles", ()), *kinds)  # type: ignore[attr-defined]
        return fn

    return mark


class RejectMessage(Exception):
    """Raised by a handler to refuse a well-formed message; counted as
    ``rejected_by_handler`` and the loop carries on."""


# --- timers ---------------------------------------------------------------------------


class TimerHandle:
    """A scheduled callback; :meth:`cancel` is idempotent and safe after it fired."""

    __slots__ = ("_queue", "callback", "when")

    def __init__(self, queue: TimerQueue, when: int, callback: TimerCallback) -> None:
        self._queue: TimerQueue | None = queue
        self.when = when
        self.callback: TimerCallback | None = callback

    @property
    def active(self) -> bool:
        return self.callback is not None

    def cancel(self) -> bool:
        """Cancel; True if this call prevented the callback from running."""
        if self.callback is None:
            return False
        self.callback = None
        if self._queue is not None:
            self._queue._live -= 1
            self._queue = None
        return True


class TimerQueue:
    """A heap of one-shot timers on the model clock (integer ns)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, TimerHandle]] = []
        self._order = itertools.count()
        self._live = 0
        self.fired = 0

    def call_at(self, when: int, callback: TimerCallback) -> TimerHandle:
        handle = TimerHandle(self, int(when), callback)
        heapq.heappush(self._heap, (handle.when, next(self._order), handle))
        self._live += 1
        return handle

    def next_deadline(self) -> int | None:
        heap = self._heap
        while heap and heap[0][2].callback is None:  # cancelled: discard lazily
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: int) -> int:
        """Run every timer due at ``now`` that was scheduled before this call (one
        scheduled by a callback for ``now`` runs on the next call, so a timer that
        re-arms itself cannot spin here).  Returns how many ran."""
        heap = self._heap
        horizon = next(self._order)
        ran = 0
        while heap and heap[0][0] <= now and heap[0][1] < horizon:
            _, _, handle = heapq.heappop(heap)
            callback = handle.callback
            if callback is None:
                continue
            handle.callback = None
            handle._queue = None
            self._live -= 1
            ran += 1
            callback(now)
        self.fired += ran
        return ran

    def __len__(self) -> int:
        return self._live


# --- settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorSettings:
    """Everything an actor learns from the topology about itself.

    Topology entry keys: ``role``, ``instance``, ``config`` (the role's own settings),
    ``peers`` (destinations to connect by ``start``), ``runtime`` and ``log``
    (override the topology-wide ``runtime`` / ``log`` sections).  ``runtime`` keys:
    ``heartbeat_ms``, ``hwm``, ``stop_drain_ms``.  The topology's ``curve`` section
    gives the keys tcp:// endpoints need (:mod:`actors.runtime.curve`).
    """

    name: str
    role: str
    instance: int
    run_dir: Path
    endpoints: Mapping[str, Endpoint]
    config: Mapping[str, Any] = field(default_factory=dict)
    peers: tuple[str, ...] = ()
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    hwm: int = DEFAULT_HWM
    stop_drain_ms: int = DEFAULT_STOP_DRAIN_MS
    log: LogSettings = field(default_factory=LogSettings)
    incarnation: int = 0
    trace: bool = True            # record DIR/trace/<name>.jsonl (runtime key `trace`)
    curve: CurveKeys | None = None  # keys for tcp:// endpoints

    @classmethod
    def from_topology(cls, topology: Mapping[str, Any], name: str, run_dir: str | Path, *,
                      incarnation: int = 0) -> ActorSettings:
        validate_name(name)
        actors = topology.get("actors") or {}
        if name not in actors:
            raise ValueError(f"actor {name!r} is not in the topology")
        entry: Mapping[str, Any] = actors[name]
        if "role" not in entry:
            raise ValueError(f"actor {name!r} has no role")
        runtime = {**(topology.get("runtime") or {}), **(entry.get("runtime") or {})}
        log = {**(topology.get("log") or {}), **(entry.get("log") or {})}
        endpoints = endpoints_from_topology(topology, run_dir)
        peers = tuple(entry.get("peers") or ())
        for peer in peers:
            if peer not in endpoints:
                raise ValueError(f"actor {name!r}: peer {peer!r} is not in the topology")
        curve = keys_for(topology, name, endpoints, (name, LAUNCHER, *peers))
        heartbeat_ms = int(runtime.get("heartbeat_ms", DEFAULT_HEARTBEAT_MS))
        if heartbeat_ms <= 0:
            raise ValueError(f"actor {name!r}: heartbeat_ms must be positive")
        return cls(
            name=name, role=str(entry["role"]), instance=int(entry.get("instance", 0)),
            run_dir=Path(run_dir), endpoints=endpoints,
            config={**(topology.get("config") or {}), **(entry.get("config") or {})},
            peers=peers,
            heartbeat_ms=heartbeat_ms,
            hwm=int(runtime.get("hwm", DEFAULT_HWM)),
            stop_drain_ms=int(runtime.get("stop_drain_ms", DEFAULT_STOP_DRAIN_MS)),
            log=LogSettings.from_dict(log), incarnation=incarnation,
            trace=tracing_enabled(runtime.get("trace", True)), curve=curve)


@dataclass
class RuntimeCounters:
    """What the loop did (transport counters live in the mailbox)."""

    messages_handled: int = 0     # messages given to a role handler
    timers_fired: int = 0
    heartbeats_sent: int = 0
    busy_ns: int = 0              # time spent in handlers, timers and hooks
    held_before_start: int = 0    # data messages that arrived before `start`
    discarded_at_stop: int = 0    # messages left unhandled when the actor stopped
    end_of_stream_unacked: int = 0


# --- the actor ------------------------------------------------------------------------


class Actor:
    """Base class of every role's process shell; see the module docstring."""

    role: ClassVar[str] = ""
    # The dict way to register handlers: {kind: method name}; @handles is the other.
    HANDLERS: ClassVar[Mapping[str, str]] = {}
    _handler_names: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            names.update(vars(klass).get("HANDLERS", {}))
            for attr, value in vars(klass).items():
                for kind in getattr(value, "_rx_handles", ()):
                    names[kind] = attr
        for kind, attr in names.items():
            if not callable(getattr(cls, attr, None)):
                raise TypeError(f"{cls.__name__}: handler {attr!r} for {kind!r} is not a method")
        cls._handler_names = names

    def __init__(self, settings: ActorSettings, *, log: Any = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.settings = settings
        self.name = settings.name
        self.instance = settings.instance
        self.config: Mapping[str, Any] = settings.config
        self.clock = clock
        self.log = log if log is not None else make_logger(
            settings.name, role=settings.role, instance=settings.instance,
            run_dir=settings.run_dir, settings=settings.log)
        # With keys, the sockets on tcp:// are CURVE (the context makes them so).
        self._curve_ctx = curve_context(settings.curve, log=self.log)
        self.mailbox = Mailbox(settings.name, settings.endpoints, hwm=settings.hwm,
                               log=self.log, adopt_first_seq=settings.incarnation > 0,
                               ctx=self._curve_ctx)
        self.mailbox.on_arrival = self._on_arrival
        self.timers = TimerQueue()
        self.runtime_counters = RuntimeCounters()
        # Chaos link faults: dest -> (mode, delay_ns), and what they hold back.
        self._link_faults: dict[str, tuple[str, int]] = {}
        self._held_out: dict[str, deque[tuple[int | None, str, dict[str, Any]]]] = {}
        self.link_fault_counters = {"held": 0, "released": 0}
        self.trace = TraceWriter(
            trace_path(settings.run_dir, settings.name, settings.incarnation)
            if settings.trace else None,
            meta={"name": settings.name, "role": settings.role, "os_pid": os.getpid(),
                  "incarnation": settings.incarnation, "clock": clock_domain()})
        self._busy_mark: tuple[int, int] | None = None  # (time, busy_ns) at the last beat
        self._cpu_at_start_ns = 0  # process CPU time when `start` arrived
        self._main_cpu_at_start_ns = 0  # and the main thread's
        self._sampler: CpuSampler | None = None  # see actors.runtime.cpuprofile
        self.link_latency: dict[str, list[int]] = {}  # sender -> [count, sum_ns, max_ns]
        # (deadline, fired) of the last timers that fired late: a real-time observer (the
        # pipeline drill) learns from them how late this process ran.
        self.late_timers: deque[tuple[int, int]] = deque(maxlen=LATE_TIMERS_KEPT)
        self.started = False
        self.t0_ns: int | None = None           # run start, from the launcher's `start`
        self.stop_reason: str | None = None
        self._born_ns = clock()
        self._held: deque[Envelope] = deque()
        self._gc_frozen = 0
        self._deferred_peers: list[str] = []  # to connect at `start`: tcp, or ipc not bound
        self._heartbeat: TimerHandle | None = None
        self._request_ids = itertools.count(1)
        self._eos_waiting: dict[str, int] = {}  # dest -> request_id of our end_of_stream
        self._signal_fds: tuple[int, int] | None = None
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd: int | None = None
        self._handlers: dict[str, Handler] = {}
        for kind, attr in self._handler_names.items():
            self.add_handler(kind, getattr(self, attr))
        self._control: dict[str, Handler] = {
            msg.START: self._on_start_msg,
            msg.STOP: self._on_stop_msg,
            msg.STATS_REQUEST: self._on_stats_request,
            msg.END_OF_STREAM: self._on_end_of_stream_msg,
            msg.END_OF_STREAM_ACK: self._on_end_of_stream_ack,
            PEER_EVENT: self._on_peer_event,
            msg.LINK_FAULT: self._on_link_fault,
        }

    # --- what a role implements ---------------------------------------------------------

    def on_start(self, now: int) -> None:
        """Called once, when ``start`` arrives: traffic may flow from here on."""

    def next_deadline(self) -> int | None:
        """The role's next timer deadline (ns, model clock), or None."""
        return None

    def on_timer(self, now: int) -> None:
        """Called when ``now`` has reached :meth:`next_deadline`."""

    def on_stop(self, now: int) -> None:
        """Called once before the final stats: flush, end streams (:meth:`end_streams`)."""

    def on_end_of_stream(self, sender: str, now: int) -> None:
        """``sender`` said nothing follows on its link to us (already acknowledged)."""

    def counters(self) -> dict[str, Any]:
        """The role's counters: string keys, msgpack-able values."""
        return {}

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        """The supervisor says ``actor`` ``event``-ed (``exited`` or ``restarted``)."""

    # --- what a role calls ----------------------------------------------------------------

    def add_handler(self, kind: str, handler: Handler) -> None:
        """Register ``handler(env, now)`` for ``kind`` (alternative to ``@handles``)."""
        if kind not in KINDS:
            raise ValueError(f"{type(self).__name__}: unknown message kind {kind!r}")
        if kind in RUNTIME_KINDS:
            raise ValueError(f"{type(self).__name__}: {kind!r} is served by the runtime")
        self._handlers[kind] = handler

    def send(self, dest: str, kind: str, body: Mapping[str, Any]) -> bool:
        """Send one message; blocks while ``dest`` is full (False only when abandoned
        at the stop deadline)."""
        fault = self._link_faults.get(dest)
        if fault is not None or self._held_out.get(dest):
            # A faulted link (chaos): hold the message, in order, until it may go.
            mode, delay = fault if fault is not None else ("delay", 0)
            release = None if mode == "cut" else self.clock() + delay
            self._held_out.setdefault(dest, deque()).append((release, kind, dict(body)))
            self.link_fault_counters["held"] += 1
            if release is not None:
                self.call_at(release, functools.partial(self._release_held, dest))
            return True
        return self.mailbox.send(dest, kind, body)

    def send_many(self, dest: str, kind: str, bodies: Sequence[Mapping[str, Any]]) -> bool:
        """Send several messages of one kind to ``dest`` in one envelope and one ZeroMQ
        message (see :meth:`Mailbox.send_many`); ``dest``'s handler is called once per
        body, in order, exactly as if each had been sent with :meth:`send`.  Blocks while
        ``dest`` is full; False only when abandoned at the stop deadline."""
        if self._link_faults.get(dest) is not None or self._held_out.get(dest):
            # A faulted link holds messages one by one, in order, as `send` does.
            for body in bodies:
                self.send(dest, kind, body)
            return True
        return self.mailbox.send_many(dest, kind, bodies)

    def _release_held(self, dest: str, now: int) -> None:
        """Send what a faulted link held whose time has come (all of it once healed)."""
        queue = self._held_out.get(dest)
        healed = dest not in self._link_faults
        while queue and (healed or (queue[0][0] is not None and queue[0][0] <= now)):
            _, kind, body = queue.popleft()
            self.link_fault_counters["released"] += 1
            self.mailbox.send(dest, kind, body)

    def _on_link_fault(self, env: Envelope, now: int) -> None:
        if not self._from_launcher(env):
            return
        dest, mode = env.body["dest"], env.body["mode"]
        if (dest not in self.settings.endpoints or mode not in ("heal", "cut", "delay")
                or env.body["delay_ns"] < 0):
            self.mailbox.reject("rejected_by_handler",
                                f"link_fault: {dest!r:.40} {mode!r:.20} "
                                f"{env.body['delay_ns']}", env.sender)
            return
        self.log.warning("link_fault", dest=dest, mode=mode, delay_ns=env.body["delay_ns"])
        if mode == "heal":
            self._link_faults.pop(dest, None)
            self._release_held(dest, now)
        elif mode in ("cut", "delay"):
            self._link_faults[dest] = (mode, int(env.body["delay_ns"]))

    def call_at(self, when_ns: int, callback: TimerCallback) -> TimerHandle:
        """Run ``callback(now)`` once the clock reaches ``when_ns``."""
        return self.timers.call_at(when_ns, callback)

    def call_later(self, delay_ns: int, callback: TimerCallback) -> TimerHandle:
        return self.timers.call_at(self.clock() + delay_ns, callback)

    def notify(self, level: str, event: str, **fields: Any) -> None:
        """Log an event locally and send it to the launcher as a ``log_event``."""
        getattr(self.log, level, self.log.info)(event, **fields)
        try:
            self.send(LAUNCHER, msg.LOG_EVENT, {"level": level, "event": event,
                                                "fields": fields})
        except MalformedMessage:  # a field msgpack cannot carry: send its repr instead
            self.send(LAUNCHER, msg.LOG_EVENT, {
                "level": level, "event": event,
                "fields": {str(k): repr(v) for k, v in fields.items()}})

    def request_stop(self, reason: str) -> None:
        """Stop after the current message (the first reason given wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            # A send blocked on a full peer gives up after the drain time.
            self.mailbox.send_deadline_ns = self.clock() + self.settings.stop_drain_ms * 1_000_000

    def end_streams(self, dests: Iterable[str], timeout_ns: int) -> set[str]:
        """Send ``end_of_stream`` to each of ``dests`` and wait (up to ``timeout_ns``) for
        their acknowledgements; return those that did not answer.  Messages of other
        kinds arriving meanwhile stay queued for the loop."""
        deadline = self.clock() + timeout_ns
        for dest in dests:
            rid = next(self._request_ids)
            self._eos_waiting[dest] = rid
            if not self.send(dest, msg.END_OF_STREAM, {"request_id": rid}):
                self._eos_waiting.pop(dest, None)
                self.runtime_counters.end_of_stream_unacked += 1
                self.log.warning("end_of_stream_unsent", dest=dest)
        waiting = set(self._eos_waiting) & set(dests)
        while waiting:
            now = self.clock()
            if now >= deadline:
                break
            self.mailbox.poll(min(MAX_IDLE_POLL_MS, -(-(deadline - now) // 1_000_000)))
            self._serve_control_only()
            waiting = set(self._eos_waiting) & waiting
        for dest in waiting:
            self._eos_waiting.pop(dest, None)
            self.runtime_counters.end_of_stream_unacked += 1
            self.log.warning("end_of_stream_unacked", dest=dest)
        return waiting

    def snapshot(self, now: int | None = None) -> dict[str, Any]:
        """Counters of the role, the transport and the loop, as sent in heartbeats."""
        now = self.clock() if now is None else now
        runtime = dict(self.runtime_counters.__dict__)
        runtime["timers_fired"] = self.timers.fired
        runtime["uptime_ns"] = now - self._born_ns
        runtime["incarnation"] = self.settings.incarnation
        # CPU this process burnt since traffic started (start-up imports excluded), and its
        # peak resident set, so `rxpath bench` can show what each actor costs per segment.
        runtime["cpu_ns_since_start"] = (time.process_time_ns() - self._cpu_at_start_ns
                                         if self.started else 0)
        # Of which this (the main) thread: the rest is ZeroMQ's I/O thread moving messages.
        runtime["main_thread_cpu_ns_since_start"] = (
            time.thread_time_ns() - self._main_cpu_at_start_ns if self.started else 0)
        runtime["max_rss_kb"] = peak_rss_kb()
        # Objects frozen out of the cyclic GC at ready (counting them again would walk them
        # all), and its collections per generation.
        runtime["gc_frozen"] = self._gc_frozen
        runtime["gc_collections"] = [g["collections"] for g in gc.get_stats()]
        runtime["inbound_queued"] = len(self.mailbox.inbound)
        runtime["late_timers"] = [list(t) for t in self.late_timers]
        runtime["link_faults"] = dict(self.link_fault_counters)
        runtime["link_latency_us"] = {
            sender: {"messages": n, "mean": round(total / n / 1000, 1), "max": round(mx / 1000, 1)}
            for sender, (n, total, mx) in self.link_latency.items() if n}
        transport = self.mailbox.counters.snapshot()
        if self._curve_ctx is not None:  # auth_allowed, auth_denied, handshake_failed
            transport.update(self._curve_ctx.guard.snapshot())
        return {"role": self.counters(), "transport": transport, "runtime": runtime}

    # --- the process ----------------------------------------------------------------------

    def run(self) -> int:
        """The whole life of the actor; returns the process exit code."""
        code = 0
        try:
            self._install_signal_handlers()
            self._watch_parent()
            self._bind_and_connect()
            self._gc_frozen = settle_heap()
            self.send(LAUNCHER, msg.READY, {
                "pid": os.getpid(), "role": self.settings.role, "instance": self.instance,
                "endpoint": self.settings.endpoints[self.name].connect})
            self.log.info("ready", incarnation=self.settings.incarnation)
            try:
                self._loop()
            finally:
                self._write_cpu_profile()
            code = self._stop_gracefully()
        except Exception as exc:
            code = EX_SOFTWARE
            self._report_crash(exc)
        finally:
            self._restore_signal_handlers()
            self.mailbox.close()
            if self._curve_ctx is not None:
                self._curve_ctx.close()
            self.trace.close(self.clock())
        self.log.info("exit", code=code, reason=self.stop_reason)
        return code

    def _write_cpu_profile(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()
            out = Path(os.environ[CPU_PROFILE_ENV]) / f"{self.name}.cpu.txt"
            sampler.write(out, root=Path(__file__).resolve().parents[2])

    def _bind_and_connect(self) -> None:
        own = ipc_path(self.settings.endpoints[self.name].bind)
        if own is not None:
            ensure_private_dir(own.parent)
        self.mailbox.bind()
        self.mailbox.outbox(LAUNCHER)
        for peer in self.settings.peers:
            path = ipc_path(self.settings.endpoints[peer].connect)
            if path is None or not path.exists():
                # Maybe not bound yet (actors start side by side; a tcp peer cannot be
                # told): a connect now could fail, and libzmq would retry only after
                # RECONNECT_IVL, doubling each time, so the run's first messages would
                # wait tens of ms while every process idles. At `start` every actor is
                # bound; connect then (or at the first send).
                self._deferred_peers.append(peer)
                continue
            self.mailbox.outbox(peer)

    def _connect_deferred_peers(self) -> None:
        for peer in self._deferred_peers:
            self.mailbox.outbox(peer)
        self._deferred_peers.clear()

    def _loop(self) -> None:
        mb = self.mailbox
        rc = self.runtime_counters
        clock = self.clock
        while self.stop_reason is None:
            if self.started:
                now = clock()
                due = self.timers.next_deadline()
                if due is not None and due <= now:
                    self.timer_fired(due, now)
                    self.timers.run_due(now)
                deadline = self.next_deadline()
                if deadline is not None and deadline <= now:
                    if deadline:  # 0 is a role's "work waiting", not a timer
                        self.timer_fired(deadline, now)
                    self.on_timer(now)
                rc.busy_ns += clock() - now
            self._dispatch_some(DISPATCH_BURST)
            if self.stop_reason is not None:
                break
            mb.poll(0 if mb.inbound else self._poll_timeout_ms(), DISPATCH_BURST)

    def timer_fired(self, deadline: int, now: int) -> None:
        """Remember a timer that fired late (see :data:`TIMER_LATE_NS`)."""
        if now - deadline > TIMER_LATE_NS:
            late = self.late_timers
            if not late or late[-1][0] != deadline:  # a role may report one twice
                late.append((deadline, now))

    def _poll_timeout_ms(self) -> int:
        if not self.started:
            return MAX_IDLE_POLL_MS
        deadlines = [d for d in (self.timers.next_deadline(), self.next_deadline())
                     if d is not None]
        if not deadlines:
            return MAX_IDLE_POLL_MS
        wait_ns = min(deadlines) - self.clock()
        # Round up: waking a little late is fine, waking early just spins.
        return max(0, min(MAX_IDLE_POLL_MS, -(-wait_ns // 1_000_000)))

    def _dispatch_some(self, limit: int) -> None:
        inbound = self.mailbox.inbound
        n = min(limit, len(inbound))
        if not n:
            return
        clock = self.clock
        dispatch = self.dispatch
        popleft = inbound.popleft
        # One clock read per message: the end of one handler is the `now` of the next.
        start = now = clock()
        try:
            for _ in range(n):
                if self.stop_reason is not None:
                    return
                dispatch(popleft(), now)
                now = clock()
        finally:
            self.runtime_counters.busy_ns += now - start

    def dispatch(self, env: Envelope, now: int) -> None:
        """Serve one accepted message (runtime control, or the role's handler)."""
        control = self._control.get(env.kind)
        if control is not None:
            control(env, now)
            return
        if not self.started:
            self._held.append(env)
            self.runtime_counters.held_before_start += 1
            return
        handler = self._handlers.get(env.kind)
        if handler is None:
            self.mailbox.reject("unhandled_kind", env.kind, env.sender)
            return
        # One-way delay of the hop (one host: the senders share this monotonic clock),
        # measured when the message is taken up, so queueing in between counts.
        lat = self.link_latency.get(env.sender)
        if lat is None:
            lat = self.link_latency[env.sender] = [0, 0, 0]
        delay = now - env.ts_ns
        if delay > 0:
            lat[1] += delay
            if delay > lat[2]:
                lat[2] = delay
        lat[0] += 1
        try:
            handler(env, now)
        except RejectMessage as exc:
            self.mailbox.reject("rejected_by_handler", f"{env.kind}: {exc}", env.sender)
            return
        self.runtime_counters.messages_handled += 1

    def _on_arrival(self, env: Envelope) -> None:
        # Seen even while a send is blocked inside a handler: lets that send give up.
        if env.kind == msg.STOP and env.sender == LAUNCHER:
            self.request_stop(f"stop: {env.body['reason']}")

    # --- control messages -----------------------------------------------------------------

    def _from_launcher(self, env: Envelope) -> bool:
        if env.sender == LAUNCHER:
            return True
        self.mailbox.reject("rejected_by_handler", f"{env.kind} from {env.sender!r}",
                            env.sender)
        return False

    def _on_start_msg(self, env: Envelope, now: int) -> None:
        if not self._from_launcher(env):
            return
        if self.started:
            self.mailbox.reject("rejected_by_handler", "start: already started", env.sender)
            return
        self.started = True
        self._connect_deferred_peers()
        self.t0_ns = env.body["t0_ns"]
        self.log.info("start", t0_ns=self.t0_ns, held=len(self._held))
        self.trace.meta(t0_ns=self.t0_ns)
        self._busy_mark = (now, self.runtime_counters.busy_ns)
        self._cpu_at_start_ns = time.process_time_ns()
        self._main_cpu_at_start_ns = time.thread_time_ns()
        if os.environ.get(CPU_PROFILE_ENV):
            self._sampler = CpuSampler()
            self._sampler.start()
        # Messages held back before `start` go first, in arrival order.
        self.mailbox.inbound.extendleft(reversed(self._held))
        self._held.clear()
        self._heartbeat = self.call_at(now + self.settings.heartbeat_ms * 1_000_000,
                                       self._send_heartbeat)
        self.on_start(now)

    def _on_stop_msg(self, env: Envelope, now: int) -> None:
        if self._from_launcher(env):
            self.request_stop(f"stop: {env.body['reason']}")

    def _on_stats_request(self, env: Envelope, now: int) -> None:
        self.send(env.sender, msg.STATS, {"counters": self.snapshot(now), "final": False,
                                          "request_id": env.body["request_id"]})

    def _on_end_of_stream_msg(self, env: Envelope, now: int) -> None:
        self.send(env.sender, msg.END_OF_STREAM_ACK, {"request_id": env.body["request_id"]})
        if self.started:
            self.on_end_of_stream(env.sender, now)

    def _on_peer_event(self, env: Envelope, now: int) -> None:
        if not self._from_launcher(env):
            return
        body = env.body
        if body["actor"] not in self.settings.endpoints or body["incarnation"] < 0:
            self.mailbox.reject("rejected_by_handler",
                                f"peer_event: {body['actor']!r:.40} incarnation "
                                f"{body['incarnation']}", env.sender)
            return
        # No seq bookkeeping here: the new incarnation's messages may already have come,
        # and the link tracker counts a seq that starts over as a restart, not a loss.
        self.log.info("peer_event", actor=body["actor"], what=body["event"],
                      incarnation=body["incarnation"])
        try:
            self.on_peer_event(body["actor"], body["role"], body["event"], now)
        except RejectMessage as exc:
            self.mailbox.reject("rejected_by_handler", f"peer_event: {exc}", env.sender)

    def _on_end_of_stream_ack(self, env: Envelope, now: int) -> None:
        if self._eos_waiting.get(env.sender) == env.body["request_id"]:
            del self._eos_waiting[env.sender]
        else:  # nobody waits for it (or it came after the wait gave up): counted
            self.mailbox.reject("rejected_by_handler",
                                f"end_of_stream_ack {env.body['request_id']} not awaited",
                                env.sender)

    def _send_heartbeat(self, now: int) -> None:
        self.send(LAUNCHER, msg.HEARTBEAT, {"counters": self.snapshot(now)})
        if self.trace.on and self._busy_mark is not None:
            # Share of the last beat spent in handlers: the actor's utilisation over time.
            since, busy = self._busy_mark
            total = self.runtime_counters.busy_ns
            self.trace.counter("actor", now, {
                "utilisation/percent": round(100 * (total - busy) / max(1, now - since), 1),
                "busy time/ms": total // 1_000_000})
            self._busy_mark = (now, total)
        self.runtime_counters.heartbeats_sent += 1
        period = self.settings.heartbeat_ms * 1_000_000
        # Keep a steady beat, but after a stall skip the missed beats instead of bursting.
        when = self._heartbeat.when + period if self._heartbeat else now + period
        self._heartbeat = self.call_at(when if when > now else now + period,
                                       self._send_heartbeat)

    # --- stopping ---------------------------------------------------------------------------

    def _serve_control_only(self) -> None:
        """While waiting for end-of-stream acks: serve control, keep the rest queued."""
        inbound = self.mailbox.inbound
        keep: deque[Envelope] = deque()
        while inbound:
            env = inbound.popleft()
            if env.kind in (msg.END_OF_STREAM, msg.END_OF_STREAM_ACK, msg.STATS_REQUEST):
                self._control[env.kind](env, self.clock())
            elif env.kind == msg.STOP:
                self._on_stop_msg(env, self.clock())
            else:
                keep.append(env)
        inbound.extend(keep)

    def _stop_gracefully(self) -> int:
        code = 0
        drain_ns = self.settings.stop_drain_ms * 1_000_000
        now = self.clock()
        self.log.info("stopping", reason=self.stop_reason)
        self.mailbox.send_deadline_ns = now + drain_ns
        if self.started:
            try:
                self.on_stop(now)
            except Exception as exc:
                code = EX_SOFTWARE
                self.log.exception("on_stop_failed")
                self.notify("error", "on_stop_failed", error=repr(exc))
        self._serve_control_only()
        rc = self.runtime_counters
        rc.discarded_at_stop += len(self.mailbox.inbound) + len(self._held)
        self.mailbox.inbound.clear()
        self._held.clear()
        # Fresh deadline for the final handshake, whatever on_stop used up.
        self.mailbox.send_deadline_ns = self.clock() + drain_ns
        self.send(LAUNCHER, msg.STATS, {"counters": self.snapshot(), "final": True})
        # The final stats must not depend on LINGER: end the stream and wait for the ack.
        self.end_streams([LAUNCHER], drain_ns)
        return code

    def _report_crash(self, exc: BaseException) -> None:
        self.log.exception("actor_crashed")
        try:
            self.mailbox.send_deadline_ns = self.clock() + 500_000_000
            if self.mailbox.inbox is not None:
                self.notify("error", "actor_crashed", error=repr(exc),
                            traceback=traceback.format_exc()[-4000:])
                self.end_streams([LAUNCHER], 500_000_000)
        except Exception:  # reporting is best effort: the crash itself is already logged
            self.log.exception("crash_report_failed")

    # --- the launcher's liveness --------------------------------------------------------------

    def _watch_parent(self) -> None:
        """Poll the launcher's liveness pipe (see :mod:`actors.runtime.launcher`): only
        the launcher holds its write end, so end of file means the launcher is gone."""
        text = os.environ.pop(PARENT_FD_ENV, "")
        if not text.isdigit():
            return
        fd = int(text)
        try:
            os.set_blocking(fd, False)
        except OSError:
            return  # not ours after all (a stale variable): nothing to watch
        self.mailbox.add_wake_fd(fd, functools.partial(self._on_parent_pipe, fd))

    def _on_parent_pipe(self, fd: int) -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # the launcher never writes; ignore rather than guess
        # Nobody is left to take the final stats or restart anyone: leave now, as the
        # parent-death SIGKILL would have made us.
        self.log.warning("launcher_gone")
        self.trace.close(self.clock())
        os._exit(EX_TEMPFAIL)

    # --- signals ----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._signal_fds = (r, w)
        # The C-level handler writes the signal number to `w`, waking the zmq poll
        # (and a blocked send's poll) at once.
        self._old_wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        self.mailbox.add_wake_fd(r, self._drain_signal_pipe)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.request_stop(signal.Signals(signum).name)

    def _drain_signal_pipe(self) -> None:
        assert self._signal_fds is not None
        try:
            data = os.read(self._signal_fds[0], 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.request_stop(signal.Signals(signum).name)

    def _restore_signal_handlers(self) -> None:
        if self._signal_fds is None:
            return
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_wakeup_fd if self._old_wakeup_fd is not None else -1)
        self.mailbox.remove_wake_fd(self._signal_fds[0])
        for fd in self._signal_fds:
            os.close(fd)
        self._signal_fds = None
