"""A reader process: a user program calling read() in a loop on its flow's socket.

It drives the ``tcp_recvmsg`` step machine (:mod:`actors.reader.tcp_recvmsg`), sending
each typed step to the stack and feeding back the decoded result, spends its think
time and copy cost in its own process (holding the socket lock where the kernel
would), and hands each read's result to the program (:mod:`actors.reader.program`),
which checks every byte and says when to read again.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator
from typing import Any

from actors.reader.program import ReaderProgram, delivery_digest
from actors.reader.tcp_recvmsg import (
    ReaderCosts,
    RecvFlags,
    RecvResult,
    SpendCpu,
    Step,
    tcp_recvmsg,
)
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.constants import EAGAIN
from protocol.envelope import Envelope
from protocol.sockops import (
    Accepted,
    InetAcceptFlow,
    MalformedOp,
    Rejected,
    SockOp,
    SockOpResult,
    decode_result,
    encode_op,
)

STACK = "stack"
__all__ = ["ReaderActor", "delivery_digest"]


class ReaderActor(Actor):
    role = "reader"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.rc = sc.reader(self.name)
        self.flow = sc.flow(self.rc.flow)
        self.profile = sc.kernel_profile
        self.sysctls = sc.sysctl
        self.rcvlowat = sc.stack.rcvlowat
        self.listen_port = sc.stack.listen_port
        self.flags = RecvFlags(dontwait=self.rc.nonblocking, waitall=self.rc.waitall)
        self.costs = ReaderCosts(hold_ns=self.rc.hold_lock_ns,
                                 copy_ns_per_byte=self.rc.copy_ns_per_byte)
        self.sock: int | None = None
        self.gen: Generator[Step, SockOpResult, RecvResult] | None = None
        self.rids = itertools.count(1)
        self.waiting_rid: int | None = None
        # What this process delivered, for the checker: one JSON line per chunk, written
        # out after every read so that a SIGKILL loses at most the read in progress.
        dl = settings.run_dir / "deliveries"
        dl.mkdir(parents=True, exist_ok=True)
        records = open(  # noqa: SIM115 -- open for the life of the process
            dl / f"{self.name}.{settings.incarnation}.jsonl", "a", encoding="utf-8")
        self.program = ReaderProgram(self.flow.name,
                                     [f.name for f in sc.flows].index(self.flow.name) + 1,
                                     self.rc.think_ns, records)

    def on_start(self, now: int) -> None:
        # accept(): our flow's connection from the stack's listener.
        self.call_later(self.rc.start_ns, lambda t: self._op(
            InetAcceptFlow(lport=self.listen_port, rport=self.flow.sport)))

    def _op(self, op: SockOp) -> None:
        rid = next(self.rids)
        self.waiting_rid = rid
        self.program.c["steps"] += 1
        if self.trace.on:
            # The step lasts until its answer: waiting for the lock or for data included.
            self.trace.begin("step", op.kernel_name, self.clock(), "main",
                             args={"sock": getattr(op, "sock", 0)})
        self.send(STACK, msg.SOCK_OP, {"request_id": rid, **encode_op(op)})

    @handles(msg.SOCK_OP_DONE)
    def on_done(self, env: Envelope, now: int) -> None:
        if env.body["request_id"] != self.waiting_rid:
            return
        self.waiting_rid = None
        if self.trace.on:
            self.trace.end("step", now)
        try:
            result = decode_result(env.body["result"])
        except MalformedOp as err:
            self.program.c["bad_results"] += 1
            result = Rejected(message=f"undecodable result: {err}")
        if isinstance(result, Rejected):
            self._notify([self.program.failed(result.message)])
        elif self.sock is None:
            assert isinstance(result, Accepted), result
            self.sock = result.sock
            self._start_read()
        else:
            self._advance(result)

    def _start_read(self) -> None:
        assert self.sock is not None
        if self.trace.on:
            t = self.clock()
            self.trace.end("think", t)
            self.trace.begin("read", "tcp_recvmsg", t, "main", args={"len": self.rc.read_size})
        self.gen = tcp_recvmsg(self.profile, self.sysctls, self.sock, self.rc.read_size,
                               self.flags, rcvlowat=self.rcvlowat, costs=self.costs)
        self._advance(None)

    def _advance(self, result: SockOpResult | None) -> None:
        assert self.gen is not None
        try:
            step = next(self.gen) if result is None else self.gen.send(result)
        except StopIteration as stop:
            self._finished(stop.value)
            return
        if isinstance(step, SpendCpu):
            # Time spent in this process (copying, or thinking with the lock held).
            if self.trace.on:
                self.trace.begin("step", "copy to user" if step.why == "copy"
                                 else "hold lock", self.clock(), "main")
            self.call_later(step.ns, self._local_step_done)
            return
        self._op(step)

    def _local_step_done(self, now: int) -> None:
        if self.trace.on:
            self.trace.end("step", now)
        self._advance(SockOpResult())

    def _finished(self, res: RecvResult) -> None:
        again, notices = self.program.read_done(res)
        if self.trace.on:
            self._trace_read_end(res)
        self._notify(notices)
        if again == 0:
            self._start_read()
        elif again is not None:
            self.call_later(again, lambda t: self._start_read())

    def _trace_read_end(self, res: RecvResult) -> None:
        t = self.clock()
        self.trace.end("read", t, args={"ret": res.ret, "direct": res.direct,
                                        "steps": len(res.steps)})
        self.trace.counter(f"{self.flow.name} read", t, {"bytes": self.program.c["bytes"]})
        if res.ret == -EAGAIN:
            self.trace.begin("think", "EAGAIN: poll again later", t, "main")
        elif res.ret > 0 and self.rc.think_ns:
            self.trace.begin("think", "think", t, "main")

    def _notify(self, notices: list[Any]) -> None:
        for n in notices:
            self.notify(n.level, n.event, **n.fields)

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role != "stack" or self.program.done:
            return
        self.gen = None
        self.waiting_rid = None
        self._notify([self.program.stack_died()])

    def on_stop(self, now: int) -> None:
        self.program.records.close()

    def counters(self) -> dict[str, Any]:
        return self.program.counters()
