"""The kernel model as a :class:`cli.drill.runner.Receiver`, on a virtual clock.

One :class:`~actors.stack.tcp_ipv4.Stack` plays the host under test. Inbound segments
go straight to ``tcp_v4_rcv`` at the script's time (packetdrill injects through a
tun device, so there is no NIC ring or NAPI in between, and the stack sizes each
skb as a tun device builds it); timers fire exactly when due; the system calls
(:mod:`cli.drill.syscalls`) hand their socket operations to ``Stack.sock_op``
directly, so a blocking read sleeps in ``sk_wait_data`` until a wakeup and takes the
socket lock like a reader. Everything is deterministic: time only moves when the
runner advances it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.profiles import Profile, Sysctls, sysctls_for
from actors.stack.net import OpDone, Transmit
from actors.stack.tcp import tcp_get_info
from actors.stack.tcp_ipv4 import Stack
from cli.drill.syscalls import CallGen, Syscalls, parse_sysctl, tcp_info_fields
from protocol.segment import Segment
from protocol.sockops import ProcSysWrite, SockOpResult


@dataclass
class ModelCall:
    gen: CallGen
    task: str
    done: bool = False
    ret: int = 0
    errno: str | None = None
    end_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    state: str = "ready"  # ready | op (asleep in the stack until its OpDone)
    value: Any = None


class ModelReceiver(Syscalls):
    """rxpath's kernel model on a virtual nanosecond clock."""


    def __init__(self, profile: Profile, *, seed: int = 1, hz: int | None = None) -> None:
        super().__init__()
        self.profile = profile
        sysctls = profile.default_sysctls if hz is None else sysctls_for(profile, hz=hz)
        self.stack = Stack(profile, sysctls, seed=seed, device="tun")
        self._now = 0
        self._out: list[tuple[int, Segment]] = []
        self._opdone: dict[str, SockOpResult] = {}
        self._calls: list[ModelCall] = []
        self._tasks = 0

    # ------------------------------------------------------------------ clock

    def now(self) -> int:
        return self._now

    def next_event_time(self) -> int | None:
        deadline = self.stack.next_deadline()
        return None if deadline is None else max(deadline, self._now)

    def advance(self, until_ns: int) -> None:
        while True:
            nxt = self.next_event_time()
            if nxt is None or nxt > until_ns:
                break
            self._now = max(self._now, nxt)
            self.stack.run_timers(self._now)
            self._drain()
        self._now = max(self._now, until_ns)
        self._drain()

    # ------------------------------------------------------------------ wire

    def inject(self, seg: Segment, *, gso_size: int = 0, more: bool = False) -> None:
        # ``more`` changes nothing here: the virtual clock does not move between writes.
        self.stack.tcp_v4_rcv(seg, self._now, gso_size=gso_size)
        self._drain()

    def take_outbound(self) -> list[tuple[int, Segment]]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ host settings

    @property
    def sysctls(self) -> Sysctls:
        return self.stack.sysctls

    def set_sysctl(self, name: str, value: str) -> bool:
        parsed = parse_sysctl(self.sysctls, name, value)
        if parsed is None:
            return False
        self.stack.sock_op("sysctl", ProcSysWrite(*parsed), self._now)
        return True

    def counters(self) -> Mapping[str, int]:
        return self.stack.net.mib.nonzero()

    def late_allowance_ns(self, expected_ns: int) -> int:
        return 0  # the virtual clock has no transport: every time is exact

    def catch_up(self) -> None:
        pass  # nothing is ever late on the virtual clock

    # ------------------------------------------------------------------ transport

    def _drain(self) -> None:
        """Collect the stack's outputs and run every call that can make progress."""
        progress = True
        while progress:
            self._collect()
            progress = False
            for call in list(self._calls):
                if self._step(call):
                    progress = True
            self._calls = [c for c in self._calls if not c.done]

    def _collect(self) -> None:
        for out in self.stack.take_outputs():
            if isinstance(out, Transmit):
                self._out.append((self._now, out.segment))
            elif isinstance(out, OpDone):
                self._opdone[out.task] = out.result

    def _step(self, call: ModelCall) -> bool:
        """Run ``call`` until it blocks or ends; True if it moved."""
        moved = False
        while not call.done:
            if call.state == "op":
                if call.task not in self._opdone:
                    return moved
                value: Any = self._opdone.pop(call.task)
            else:
                value = call.value
            moved = True
            try:
                req = call.gen.send(value)
            except StopIteration as stop:
                call.ret, call.errno, call.extra = stop.value
                call.done = True
                call.end_ns = self._now
                return True
            res = self.stack.sock_op(call.task, req, self._now)
            self._collect()
            if res is None:
                call.state = "op"
            else:
                call.state, call.value = "ready", res
        return moved

    def syscall(self, name: str, args: dict[str, Any]) -> ModelCall:
        gen = self.start_call(name, args)
        self._tasks += 1
        call = ModelCall(gen, task=f"app{self._tasks}")
        self._calls.append(call)
        self._drain()
        return call

    # ------------------------------------------------------------------ tcp_info

    def tcp_info(self, four_tuple: tuple[str, int, str, int]) -> dict[str, int] | None:
        sock_id = self.stack.ehash.get(four_tuple)
        sk = self.stack.socks.get(sock_id) if sock_id is not None else None
        if sk is None:
            matches = [s for s in self.stack.socks.values()
                       if (s.raddr, s.rport, s.laddr, s.lport) == four_tuple]
            sk = matches[-1] if matches else None
        if sk is None:
            return None
        return tcp_info_fields(tcp_get_info(sk, self._now))
