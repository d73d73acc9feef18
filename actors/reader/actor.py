"""A reader process: a user program calling read() in a loop on its flow's socket.

It drives the ``tcp_recvmsg`` step machine one message per step, spends its think
time and copy cost in its own process (holding the socket lock where the kernel
would), and checks every byte it gets against the flow's payload.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator
from typing import Any

from actors.peer.payload import verify
from actors.reader.tcp_recvmsg import ReaderCosts, RecvFlags, RecvResult, Step, tcp_recvmsg
from actors.runtime.actor import Actor, ActorSettings, handles
from cli.config import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope

STACK = "stack"
EAGAIN = 11
RETRY_NS = 1_000_000  # a non-blocking reader polls again after 1 ms


class ReaderActor(Actor):
    role = "reader"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.rc = sc.reader(self.name)
        self.flow = sc.flow(self.rc.flow)
        self.flow_id = [f.name for f in sc.flows].index(self.flow.name) + 1
        self.profile = sc.kernel_profile
        self.sysctls = sc.sysctl
        self.rcvlowat = sc.stack.rcvlowat
        self.flags = RecvFlags(dontwait=self.rc.nonblocking, waitall=self.rc.waitall)
        self.costs = ReaderCosts(hold_ns=self.rc.hold_lock_ns,
                                 copy_ns_per_byte=self.rc.copy_ns_per_byte)
        self.sock: int | None = None
        self.gen: Generator[Step, dict[str, Any], RecvResult] | None = None
        self.rids = itertools.count(1)
        self.waiting_rid: int | None = None
        self.c = {"reads": 0, "bytes": 0, "eagain": 0, "direct_bytes": 0, "bad_bytes": 0,
                  "eof": 0, "errors": 0, "steps": 0}
        self.first_bad: int | None = None
        self.done = False

    def on_start(self, now: int) -> None:
        self.call_later(self.rc.start_ns, lambda t: self._op("connect_flow", 0,
                                                              {"sport": self.flow.sport}))

    def _op(self, op: str, sock: int, args: dict[str, Any]) -> None:
        rid = next(self.rids)
        self.waiting_rid = rid
        self.c["steps"] += 1
        self.send(STACK, msg.SOCK_OP, {"request_id": rid, "op": op, "sock": sock, "args": args})

    @handles(msg.SOCK_OP_DONE)
    def on_done(self, env: Envelope, now: int) -> None:
        if env.body["request_id"] != self.waiting_rid:
            return
        self.waiting_rid = None
        result = env.body["result"]
        if "error_msg" in result:
            self.c["errors"] += 1
            self.notify("error", "reader_error", flow=self.flow.name, error=result["error_msg"])
            self.done = True
            return
        if self.sock is None:
            self.sock = int(result["sock"])
            self._start_read()
            return
        self._advance(result)

    def _start_read(self) -> None:
        assert self.sock is not None
        self.gen = tcp_recvmsg(self.profile, self.sysctls, self.sock, self.rc.read_size,
                               self.flags, rcvlowat=self.rcvlowat, costs=self.costs)
        self._advance(None)

    def _advance(self, result: dict[str, Any] | None) -> None:
        assert self.gen is not None
        try:
            step = next(self.gen) if result is None else self.gen.send(result)
        except StopIteration as stop:
            self._finished(stop.value)
            return
        name, args = step
        if name == "cpu":
            # Time spent in this process (copying, or thinking with the lock held).
            self.call_later(int(args["ns"]), lambda t: self._advance({}))
            return
        args = dict(args)
        self._op(name, args.pop("sock"), args)

    def _finished(self, res: RecvResult) -> None:
        self.c["reads"] += 1
        if res.ret > 0:
            for off, chunk in res.chunks:
                bad = verify(self.flow_id, off, chunk)
                if bad is not None:
                    self.c["bad_bytes"] += 1
                    if self.first_bad is None:
                        self.first_bad = bad
                        self.notify("error", "bad_bytes", flow=self.flow.name, offset=bad,
                                    chunk_offset=off, chunk_len=len(chunk),
                                    found_at=_locate(self.flow_id, off, chunk),
                                    steps=res.steps[-12:])
            self.c["bytes"] += res.ret
            self.c["direct_bytes"] += res.direct
        elif res.ret == 0:
            self.c["eof"] = 1
            self.done = True
            self.notify("info", "reader_eof", flow=self.flow.name, bytes=self.c["bytes"],
                        bad_bytes=self.c["bad_bytes"])
            return
        elif res.ret == -EAGAIN:
            self.c["eagain"] += 1
            self.call_later(max(self.rc.think_ns, RETRY_NS), lambda t: self._start_read())
            return
        else:
            self.c["errors"] += 1
            self.done = True
            self.notify("error", "reader_error", flow=self.flow.name, error=res.ret)
            return
        if self.rc.think_ns:
            self.call_later(self.rc.think_ns, lambda t: self._start_read())
        else:
            self._start_read()

    def counters(self) -> dict[str, Any]:
        return {**self.c, "flow": self.flow.name, "first_bad": self.first_bad}


def _locate(flow_id: int, near: int, chunk: bytes) -> int | None:
    """Where in the flow ``chunk`` really belongs (searching around ``near``), for reports."""
    from actors.peer.payload import payload_bytes
    lo = max(0, near - 256 * 1024)
    window = payload_bytes(flow_id, lo, 512 * 1024 + len(chunk))
    i = window.find(chunk[:64])
    return None if i < 0 else lo + i
