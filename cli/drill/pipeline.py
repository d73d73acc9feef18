"""The real actor processes as a :class:`cli.drill.runner.Receiver`, in real time.

``rxpath drill --pipeline`` runs a script through the emulator itself: the NIC, one
CPU (hardirq, NAPI, ``ip_rcv``) and the stack each run as their own process, started
by a :class:`~actors.runtime.launcher.Launcher` in this process. There is no peer and
no reader actor: this process plays both.

- The remote peer: an inbound segment is encoded and sent to the NIC as a ``wire``
  message; the NIC's transmissions come back here as ``wire`` messages (the topology
  names this process as the NIC's ``wire_peer``) and are decoded and time-stamped on
  arrival.
- The user process: the system calls are the model receiver's own
  (:mod:`cli.drill.syscalls`); each socket operation they yield (listen and connect
  included) is sent to the stack as a ``sock_op`` message, one at a time. A sysctl set
  while the processes run is written to the stack the same way (``proc_sys_write``);
  only the softirq's own settings (netdev_budget...) cannot change after start.

Time is real: the clock is the monotonic clock minus the moment the script started.
Until the script first needs the stack (a socket operation or a packet), the
processes are not started (the sysctls set so far are part of their scenario), so
the clock stands still and only moves when the runner advances it; from then on it
runs.

Two rules keep a real-time run comparable to packetdrill's:

- ``inject`` returns once the stack has run ``tcp_v4_rcv`` on the segment (packetdrill
  writes to a tun device, which runs the receive path before ``write`` returns; the
  stack tells this process, its ``rcv_watcher``, after each run of frames), so a
  system call that follows a packet in the script sees its effect;
- a call whose current step sleeps (``sk_wait_data``, a blocking ``accept``,
  ``connect`` or ``epoll_wait``) is
  reported as blocked once the stack has answered a probe sent right behind that
  step (it serves one sender's messages in order, and answers a probe at once); it
  completes when the stack wakes it.

Timing. The script's tolerance applies as written on the early side: the pipeline
can make things late, never early, so a packet or a return that comes too soon is
the receiver's own doing and fails as in the model. On the late side each check
allows, on top of the script's tolerance, what this run measured of its own delays
(:meth:`PipelineReceiver.late_allowance_ns`): the time its messages spent in flight
(an inject until the stack confirms it ran ``tcp_v4_rcv``, each non-sleeping step of
a call), the times this process woke late, the largest one-way hop latency seen
(envelopes carry their sender's monotonic send time, one host shares that clock) and
:data:`TIMER_GRANULARITY_NS`; and, once something the script expects is overdue
(:meth:`PipelineReceiver.catch_up`), the times the stack's and the NIC's timers fired
late, which they report. All of it is looked for in the window from
:data:`DELAY_LOOKBACK_NS` before the expected time until now. Times the receiver
reports are the actors' own where a message carries them: an outbound packet is at
the moment the NIC put it on the wire, a blocking call returns when the stack woke it
(the steps after the wakeup are the process's own instructions, which take no
modelled time), a call that never slept returns when it was made.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from actors.profiles import MS, SOFTIRQ_SYSCTLS, Profile, Sysctls, sysctl_write, sysctls_for
from actors.runtime.launcher import Launcher
from actors.scenario import CpuConfig, FlowConfig, NicConfig, ReaderConfig, Scenario, StackConfig
from cli.drill.runner import LOCAL_IP, Unsupported
from cli.drill.syscalls import CallGen, Syscalls, parse_sysctl, tcp_info_fields
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.segment import Segment, TcpFlags
from protocol.sockops import (
    EpPoll,
    Failed,
    InetAccept,
    InetWaitForConnect,
    ProcSysWrite,
    SkWaitData,
    SockOp,
    SockOpResult,
    TcpGetInfo,
    TcpInfo,
    TcpPoll,
    decode_result,
    encode_op,
)
from protocol.wire import MalformedPacket, decode_ipv4, decode_tcp, encode

POLL_NS = 1 * MS               # how finely the runner watches the pipeline
# An actor's poll timeout is a whole number of milliseconds, rounded up: a stack timer
# fires up to this late even on an idle host.
TIMER_GRANULARITY_NS = 1 * MS
# How far before an expected time a delay may have started and still have made it
# late: the longest receive-side timer a script waits for (TCP_DELACK_MAX, 200 ms)
# plus margin.
DELAY_LOOKBACK_NS = 250 * MS
OP_TIMEOUT_S = 5.0             # a step that is not a sleep must be answered by then
INJECT_TIMEOUT_S = 2.0         # how long inject waits for the stack to take the segment
READY_TIMEOUT_S = 30.0
STACK, NIC, CPU = "stack", "nic", "cpu0"
WARM_UP_SEGMENTS = 3
WARM_UP_IP = "198.51.100.1"    # TEST-NET-2: never the script's remote address
WARM_UP_PORT = 9
SLEEPING_STEPS = frozenset({SkWaitData.kernel_name, InetAccept.kernel_name,
                            InetWaitForConnect.kernel_name, EpPoll.kernel_name})

@dataclass
class PipelineCall:
    """A system call in progress (one step at the stack at a time) or finished."""

    gen: CallGen
    done: bool = False
    ret: int = 0
    errno: str | None = None
    end_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    request_id: int | None = None   # the step waiting for the stack's answer
    step: str = ""
    sent_ns: int = 0
    start_ns: int = 0
    woken_ns: int | None = None     # when the stack ended its last sleep (its clock)
    asleep: bool = False            # its current step sleeps in the stack


def _mib_total(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """The MIB counters of every process, summed (ip_rcv counts in the CPU's)."""
    total: dict[str, int] = {}
    for role in stats.values():
        for k, v in (role.get("mib") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _info(res: SockOpResult) -> dict[str, Any]:
    assert isinstance(res, TcpInfo), res
    return res.info


def drill_scenario(profile: Profile, sysctls: Sysctls, *, seed: int) -> Scenario:
    """One NIC queue, one CPU, the stack at ``LOCAL_IP`` with no socket yet.

    The scenario format wants a flow and its reader; neither runs (no peer or reader
    actor is started), they only satisfy the schema.
    """
    return Scenario(
        profile=profile.name, seed=seed, duration=3600.0, sysctl=sysctls,
        nic=NicConfig(queues=1, rx_usecs=0, rx_frames=1, device="tun"),
        cpu=CpuConfig(count=1),
        stack=StackConfig(address=LOCAL_IP, listen_port=0),
        flows=(FlowConfig(),), readers=(ReaderConfig(),),
    )


def drill_topology(sc: Scenario) -> dict[str, Any]:
    """nic, cpu0 and stack; the NIC's wire peer is the launcher (this process)."""
    return {
        "actors": {
            NIC: {"role": "nic", "instance": 0, "peers": [CPU],
                  "config": {"wire_peer": "launcher"}},
            CPU: {"role": "cpu", "instance": 0, "peers": [NIC, STACK]},
            STACK: {"role": "stack", "instance": 0, "peers": [NIC, CPU],
                    "config": {"rcv_watcher": "launcher"}},
        },
        "config": {"scenario": sc.to_dict()},
        # Heartbeats are not needed (stats are asked for); traces would cost time.
        "runtime": {"heartbeat_ms": 60_000, "trace": False},
        "log": {"level": "warning"},
    }


class PipelineReceiver(Syscalls):
    """The actor processes on the real clock; see the module docstring.

    Use as a context manager (or call :meth:`close`): leaving it stops and reaps
    every process it started.
    """

    def __init__(self, profile: Profile, *, seed: int = 1,
                 run_dir: str | Path | None = None, hz: int | None = None) -> None:
        super().__init__()
        self.profile = profile
        self.seed = seed
        self._sysctls = profile.default_sysctls if hz is None else sysctls_for(profile, hz=hz)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if run_dir is None:
            # Short: ipc socket paths live under it (sun_path is 108 bytes).
            self._tmp = tempfile.TemporaryDirectory(prefix="rxdrill-")
            run_dir = self._tmp.name
        self.run_dir = Path(run_dir)
        self.launcher: Launcher | None = None
        self._virtual_ns = 0          # the clock until the processes run
        self._origin_ns: int | None = None
        self._out: list[tuple[int, Segment]] = []
        self._calls: dict[int, PipelineCall] = {}  # request_id -> call waiting on it
        self._replies: dict[int, SockOpResult] = {}
        self._rids = itertools.count(1)
        self._injected = 0  # segments sent to the NIC, warm-up included
        self._burst: list[tuple[Segment, int]] = []  # held by inject(more=True)
        self._received = 0  # of them, through tcp_v4_rcv (the stack's rcv_progress)
        self._baseline: dict[str, int] = {}
        self.errors: list[str] = []
        # Measured delays (see the module doc), on this receiver's clock: intervals the
        # pipeline's messages were in flight or this process overslept, and hop latencies.
        self._delays: deque[tuple[int, int]] = deque()
        self._hops: deque[tuple[int, int]] = deque()
        self._late_timers: set[tuple[int, int]] = set()  # the actors' reports taken so far
        self._woken: list[PipelineCall] = []  # calls the stack just woke
        self._probes: dict[int, tuple[PipelineCall, int]] = {}  # probe -> (call, its step)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PipelineReceiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop every actor process (and reap it); remove the temporary run directory."""
        if self.launcher is not None:
            self.launcher.stop(timeout_s=5.0, reason="drill done")
            self.launcher = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _ensure_running(self) -> None:
        if self.launcher is not None:
            return
        sc = drill_scenario(self.profile, self.sysctls, seed=self.seed)
        launcher = Launcher(drill_topology(sc), self.run_dir, ready_timeout_s=READY_TIMEOUT_S)
        launcher.start()
        self.launcher = launcher
        self._warm_up()
        # The script's time so far stays; from here on it is real time.
        self._origin_ns = time.monotonic_ns() - self._virtual_ns
        self._delays.clear()  # start-up is not the script's
        self._hops.clear()

    def _warm_up(self) -> None:
        """Send a few segments for no socket round the whole path and wait for the
        stack's resets, so the script's first packet does not pay for the processes'
        first connections and first runs of their code. What they counted becomes
        the baseline every counter is reported from."""
        assert self.launcher is not None
        for i in range(WARM_UP_SEGMENTS):
            probe = Segment(src=WARM_UP_IP, sport=WARM_UP_PORT + i, dst=LOCAL_IP,
                            dport=WARM_UP_PORT, seq=1, ack=1, flags=TcpFlags.ACK,
                            window=1000)
            self.launcher.send(NIC, msg.WIRE, {"frames": [encode(probe)]})
            self._injected += 1
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not any(seg.flags & TcpFlags.RST for _, seg in self._out):
                if time.monotonic() > deadline:
                    raise RuntimeError("the pipeline did not answer its warm-up segment")
                self._pump(1)
            self._out.clear()
        self._wait_received("the warm-up segments")
        self._baseline = _mib_total(self._stats([NIC, CPU, STACK]))

    @property
    def running(self) -> bool:
        return self.launcher is not None

    # ------------------------------------------------------------------ clock

    def now(self) -> int:
        if self._origin_ns is None:
            return self._virtual_ns
        return time.monotonic_ns() - self._origin_ns

    def next_event_time(self) -> int | None:
        # Anything may arrive at any moment: the runner looks again every POLL_NS.
        return self.now() + POLL_NS if self.running else None

    def advance(self, until_ns: int) -> None:
        if not self.running:
            self._virtual_ns = max(self._virtual_ns, until_ns)
            return
        while True:
            left = until_ns - self.now()
            if left <= 0:
                break
            self._pump(max(1, left // MS))
        self._pump(0)

    # ------------------------------------------------------------------ messages

    def _pump(self, timeout_ms: int, *, finish_woken: bool = True) -> None:
        """Take what the actors sent (waiting up to ``timeout_ms`` for the first).

        A call the stack woke is then run to its end (or its next sleep) before this
        returns: the rest of it is the process's own work, which takes no script time,
        so the runner must not see it half done."""
        assert self.launcher is not None
        before = self.now()
        got = self.launcher.poll(timeout_ms=int(timeout_ms))
        woke = self.now()
        if woke - before > timeout_ms * MS + POLL_NS:
            self._delay(before + timeout_ms * MS, woke)  # this process overslept
        for env in got:
            self._absorb(env)
        if finish_woken:
            while self._woken:
                self._run_call(self._woken.pop(), "a woken call")

    def _run_call(self, call: PipelineCall, name: str) -> None:
        """Wait for ``call``'s steps until it ends or one of them sleeps in the stack."""
        deadline = time.monotonic() + OP_TIMEOUT_S
        while not call.done and not call.asleep:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the stack did not answer step {call.step}")
            self._pump(1, finish_woken=False)

    # ------------------------------------------------------------------ measured delays

    def _delay(self, start_ns: int, end_ns: int) -> None:
        if end_ns > start_ns:
            self._delays.append((start_ns, end_ns))
        self._forget()

    def _forget(self) -> None:
        horizon = self.now() - 4 * DELAY_LOOKBACK_NS
        while self._delays and self._delays[0][1] < horizon:
            self._delays.popleft()
        while self._hops and self._hops[0][0] < horizon:
            self._hops.popleft()

    def _sent_at(self, env: Envelope) -> int:
        """The sender's send time on this receiver's clock (one host, one monotonic clock)."""
        return env.ts_ns - (self._origin_ns or 0)

    def late_allowance_ns(self, expected_ns: int) -> int:
        if not self.running:
            return 0
        lo, now = expected_ns - DELAY_LOOKBACK_NS, self.now()
        busy, edge = 0, lo
        for start, end in sorted(self._delays):  # their union, clipped to [lo, now]
            start, end = max(start, edge), min(end, now)
            if end > start:
                busy += end - start
                edge = end
        hop = max((h for t, h in self._hops if t >= lo), default=0)
        return busy + hop + TIMER_GRANULARITY_NS

    def catch_up(self) -> None:
        """Ask the stack and the NIC how late their timers ran (a round trip they answer
        after firing whatever is due): a delayed ACK that the stack's timer sent late, or
        has not sent yet because the host did not run it, is the emulator's delay too."""
        if not self.running:
            return
        assert self.launcher is not None
        origin = self._origin_ns or 0
        sent = self.now()
        got = self.launcher.request_stats([STACK, NIC], timeout_s=5.0)
        self._delay(sent, self.now())
        for snap in got.values():
            for due, fired in (snap.get("runtime") or {}).get("late_timers", ()):
                late = (int(due) - origin, int(fired) - origin)
                if late not in self._late_timers:
                    self._late_timers.add(late)
                    self._delay(*late)
        self._pump(0)  # what arrived meanwhile

    def _absorb(self, env: Envelope) -> None:
        arrived = self.now()
        sent = self._sent_at(env)
        self._hops.append((arrived, max(0, arrived - sent)))
        if env.kind == msg.WIRE:
            t = sent  # on the wire when the NIC sent it
            xmit = env.body.get("xmit_ns")
            if xmit is not None:
                # A real device sees a segment leave when the stack transmits it; the
                # stack -> nic -> here hops are this emulator's, measured as one delay.
                t = xmit - (self._origin_ns or 0)
                self._hops.append((arrived, max(0, arrived - t)))
            for frame in env.body["frames"]:
                try:
                    self._out.append((t, decode_tcp(decode_ipv4(frame))))
                except MalformedPacket as err:
                    self.errors.append(f"undecodable frame from the NIC: {err}")
        elif env.kind == msg.RCV_PROGRESS:
            self._received = max(self._received, int(env.body["segments"]))
        elif env.kind == msg.SOCK_OP_DONE:
            rid = int(env.body["request_id"])
            probe = self._probes.pop(rid, None)
            if probe is not None:
                waiting, step_rid = probe
                waiting.asleep = waiting.request_id == step_rid and not waiting.done
                return
            call = self._calls.pop(rid, None)
            if call is not None:
                if call.step in SLEEPING_STEPS:
                    call.woken_ns = sent
                    self._woken.append(call)
                else:
                    self._delay(call.sent_ns, arrived)
                self._resume(call, decode_result(env.body["result"]))
            else:
                self._replies[rid] = decode_result(env.body["result"])
        elif env.kind == msg.LOG_EVENT and env.body.get("level") in ("error", "critical"):
            self.errors.append(f"{env.sender}: {env.body['event']} {env.body['fields']}")

    def _stats(self, names: list[str]) -> dict[str, dict[str, Any]]:
        assert self.launcher is not None
        sent = self.now()
        got = self.launcher.request_stats(names, timeout_s=5.0)
        self._delay(sent, self.now())  # the emulator's round trip, as _op_now's
        self._pump(0)  # what arrived meanwhile
        return {name: (c.get("role") or {}) for name, c in got.items()}

    def _request(self, op: SockOp) -> int:
        self._ensure_running()
        assert self.launcher is not None
        rid = next(self._rids)
        self.launcher.send(STACK, msg.SOCK_OP, {"request_id": rid, **encode_op(op)})
        return rid

    def _op_now(self, op: SockOp) -> SockOpResult:
        """One step, waited for here (an operation that never sleeps).  Its round trip
        is this emulator's, not the kernel's: measured as a delay, like a call's."""
        rid = self._request(op)
        sent = self.now()
        deadline = time.monotonic() + OP_TIMEOUT_S
        while rid not in self._replies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not answer {op}")
            self._pump(1)
        self._delay(sent, self.now())
        return self._replies.pop(rid)

    # ------------------------------------------------------------------ wire

    def inject(self, seg: Segment, *, gso_size: int = 0, more: bool = False) -> None:
        """Segments written at one instant leave together, in one wire message: the
        kernel takes packetdrill's back-to-back writes microseconds apart, this
        pipeline's hops take milliseconds each, and sent one by one a timer armed by
        the first (a compressed SACK, 1 ms or less) would fire before the next arrives."""
        self._ensure_running()
        assert self.launcher is not None
        self._burst.append((seg, gso_size))
        if more:
            return
        burst, self._burst = self._burst, []
        sent = self.now()
        body: dict[str, Any] = {"frames": [encode(s) for s, _ in burst]}
        if any(g for _, g in burst):
            body["gso"] = [g for _, g in burst]  # the virtio_net_hdr of each tun write
        self.launcher.send(NIC, msg.WIRE, body)
        self._injected += len(burst)
        try:
            self._wait_received(f"the segment {burst[-1][0].describe()}")
        finally:
            self._delay(sent, self.now())

    def _wait_received(self, what: str) -> None:
        """Until tcp_v4_rcv has run on every segment sent so far, as a tun write waits
        (see the module doc)."""
        deadline = time.monotonic() + INJECT_TIMEOUT_S
        while self._received < self._injected:
            if time.monotonic() > deadline:
                self.errors.append(f"the stack did not take {what}")
                return
            self._pump(1)

    def take_outbound(self) -> list[tuple[int, Segment]]:
        if self.running:
            self._pump(0)
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ host settings

    @property
    def sysctls(self) -> Sysctls:
        return self._sysctls

    def set_sysctl(self, name: str, value: str) -> bool:
        parsed = parse_sysctl(self.sysctls, name, value)
        if parsed is None:
            return False
        short, values = parsed
        new = sysctl_write(self._sysctls, short, values)
        if self.running and new != self._sysctls:
            if short in SOFTIRQ_SYSCTLS:
                raise Unsupported(f"sysctl {name} changed after start: the cpu processes "
                                  "read it when they start")
            res = self._op_now(ProcSysWrite(short, values))
            if isinstance(res, Failed):
                self.errors.append(f"the stack refused sysctl {name}={value}")
        self._sysctls = new
        return True

    def counters(self) -> Mapping[str, int]:
        if not self.running:
            return {}
        total = _mib_total(self._stats([NIC, CPU, STACK]))
        return {k: d for k, v in total.items() if (d := v - self._baseline.get(k, 0))}

    # ------------------------------------------------------------------ calls

    def syscall(self, name: str, args: dict[str, Any]) -> PipelineCall:
        call = PipelineCall(self.start_call(name, args), start_ns=self.now())
        self._resume(call, None)
        self._run_call(call, f"{name}()")
        return call

    def _resume(self, call: PipelineCall, value: SockOpResult | None) -> None:
        """Feed a step's answer to ``call``; send its next step, or finish it."""
        try:
            op = call.gen.send(value) if value is not None else next(call.gen)
        except StopIteration as stop:
            call.ret, call.errno, call.extra = stop.value
            call.done = True
            # When the stack woke it, or at once if it never slept (see the module doc).
            call.end_ns = call.woken_ns if call.woken_ns is not None else call.start_ns
            call.request_id = None
            return
        rid = self._request(op)
        call.request_id, call.step, call.sent_ns = rid, op.kernel_name, self.now()
        call.asleep = False
        self._calls[rid] = call
        if call.step in SLEEPING_STEPS:
            # The stack serves our messages in order and answers a probe at once: if the
            # probe's answer comes first, the step is asleep (it may be woken later).
            sock = op.socks[0] if isinstance(op, EpPoll) else op.sock  # type: ignore[attr-defined]
            self._probes[self._request(TcpPoll(sock))] = (call, rid)

    # ------------------------------------------------------------------ tcp_info

    def tcp_info(self, four_tuple: tuple[str, int, str, int]) -> dict[str, int] | None:
        if not self.running:
            return None
        raddr, rport, laddr, lport = four_tuple
        socks = self._stats([STACK]).get(STACK, {}).get("sockets") or []
        mine = [s for s in socks
                if s.get("peer") == f"{raddr}:{rport}" and s.get("local") == f"{laddr}:{lport}"]
        if not mine:
            return None
        res = self._op_now(TcpGetInfo(int(mine[-1]["sock"])))
        assert isinstance(res, TcpInfo), res
        return tcp_info_fields(res.info)
