"""A reader process: a user program calling read() in a loop on its flow's socket.

It drives the ``tcp_recvmsg`` step machine (:mod:`actors.reader.tcp_recvmsg`), sending
each typed step to the stack and feeding back the decoded result, spends its think
time and copy cost in its own process (holding the socket lock where the kernel
would), and hands each read's result to the program (:mod:`actors.reader.program`),
which checks every byte and says when to read again.

A reader given several flows is an epoll server, as event-driven servers are written:
it accepts each connection, then reads the sockets epoll reports ready with
non-blocking reads, one read at a time in turn, until each says EAGAIN, and sleeps in
``ep_poll`` when none is left.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Generator
from pathlib import Path
from typing import Any

from actors.reader.program import Notice, ReaderProgram, delivery_digest
from actors.reader.tcp_recvmsg import (
    ReaderCosts,
    RecvFlags,
    RecvResult,
    SpendCpu,
    Step,
    tcp_recvmsg,
)
from actors.runtime.actor import Actor, ActorSettings, RejectMessage, handles
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.constants import EAGAIN
from protocol.envelope import Envelope
from protocol.sockops import (
    Accepted,
    EpPoll,
    InetAcceptFlow,
    MalformedOp,
    Rejected,
    SockOp,
    SockOpResult,
    Woken,
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
        self.flows = [sc.flow(name) for name in self.rc.served_flows]
        self.flow = self.flows[0]
        self.server = len(self.flows) > 1
        self.profile = sc.kernel_profile
        self.sysctls = sc.sysctl
        self.rcvlowat = sc.stack.rcvlowat
        self.listen_port = sc.stack.listen_port
        # An epoll server never blocks in read(): it sleeps in epoll_wait instead.
        self.flags = RecvFlags(dontwait=self.rc.nonblocking or self.server,
                               waitall=self.rc.waitall)
        self.costs = ReaderCosts(hold_ns=self.rc.hold_lock_ns,
                                 copy_ns_per_byte=self.rc.copy_ns_per_byte)
        self.sock: int | None = None  # the socket of the read in progress
        self.gen: Generator[Step, SockOpResult, RecvResult] | None = None
        self.rids = itertools.count(1)
        self.waiting_rid: int | None = None
        # What this process delivered, for the checker: one JSON line per chunk, written
        # out after every read so that a SIGKILL loses at most the read in progress.
        dl = settings.run_dir / "deliveries"
        dl.mkdir(parents=True, exist_ok=True)
        records = open(  # noqa: SIM115 -- open for the life of the process
            dl / f"{self.name}.{settings.incarnation}.jsonl", "a", encoding="utf-8")
        flow_ids = {f.name: i + 1 for i, f in enumerate(sc.flows)}
        self.programs = [ReaderProgram(f.name, flow_ids[f.name], self.rc.think_ns, records,
                                       content=_file_bytes(sc.sender_file(f.name)))
                         for f in self.flows]
        self.program = self.programs[0]  # the program of the read in progress
        # The epoll server's sockets: which program each feeds, the wakeup counts epoll
        # last reported, and the ready list (read in turn until EAGAIN).
        self.sock_program: dict[int, ReaderProgram] = {}
        self.flow_of_port = {f.sport: p for f, p in zip(self.flows, self.programs, strict=True)}
        self.accepted: set[str] = set()  # flows whose connection we have
        self.seen: dict[int, int] = {}
        self.ready: deque[int] = deque()

    def on_start(self, now: int) -> None:
        self.call_later(self.rc.start_ns, lambda t: self._accept_next())

    def _accept_next(self) -> None:
        # accept(): the oldest of our flows' connections still to take, from the stack's
        # listener (a server takes them as their handshakes end, in any order).
        self._op(InetAcceptFlow(lport=self.listen_port, rports=[
            port for port, p in self.flow_of_port.items() if p.flow not in self.accepted]))

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
            raise RejectMessage(f"sock_op_done {env.body['request_id']}: waiting for "
                                f"{self.waiting_rid}")
        self.waiting_rid = None
        if self.trace.on:
            self.trace.end("step", now)
        try:
            result = decode_result(env.body["result"])
        except MalformedOp as err:
            self.program.c["bad_results"] += 1
            result = Rejected(message=f"undecodable result: {err}")
        if isinstance(result, Rejected):
            self._notify([p.failed(result.message) for p in self.programs if not p.done])
        elif isinstance(result, Accepted):
            program = self.flow_of_port.get(result.rport, self.programs[0])
            self.sock_program[result.sock] = program
            self.accepted.add(program.flow)
            if not self.server:
                self.sock = result.sock
                self._start_read()
            elif len(self.sock_program) < len(self.flows):
                self._accept_next()
            else:
                self.ready.extend(self.sock_program)
                self._serve()
        elif self.gen is None:
            self._epoll_done(result)
        else:
            self._advance(result)

    # --- the epoll server ------------------------------------------------------------

    def _serve(self) -> None:
        """The next read of the server's ready list, or epoll_wait when it is empty."""
        if self.ready:
            self.sock = self.ready.popleft()
            self.program = self.sock_program[self.sock]
            self._start_read()
            return
        watched = [s for s, p in self.sock_program.items() if not p.done]
        if watched:
            self._op(EpPoll(socks=watched, seen=[self.seen.get(s, 0) for s in watched]))

    def _epoll_done(self, result: SockOpResult) -> None:
        if isinstance(result, Woken):
            for sock, wakeups in zip(result.ready, result.wakeups, strict=True):
                self.seen[sock] = wakeups
                if sock in self.sock_program and sock not in self.ready:
                    self.ready.append(sock)
        self._serve()

    def _server_read_done(self, res: RecvResult, again: int | None) -> None:
        assert self.sock is not None
        if res.ret > 0:
            self.ready.append(self.sock)  # until EAGAIN; the others get their turn first
            if again:
                self.call_later(again, lambda t: self._serve())
                return
        self._serve()

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
        self.gen = None
        if self.trace.on:
            self._trace_read_end(res)
        self._notify(notices)
        if self.server:
            self._server_read_done(res, again)
        elif again == 0:
            self._start_read()
        elif again is not None:
            self.call_later(again, lambda t: self._start_read())

    def _trace_read_end(self, res: RecvResult) -> None:
        t = self.clock()
        self.trace.end("read", t, args={"ret": res.ret, "direct": res.direct,
                                        "steps": len(res.steps)})
        self.trace.counter(f"{self.program.flow} read", t, {"bytes": self.program.c["bytes"]})
        if res.ret == -EAGAIN:
            self.trace.begin("think", "EAGAIN: poll again later", t, "main")
        elif res.ret > 0 and self.rc.think_ns:
            self.trace.begin("think", "think", t, "main")

    def _notify(self, notices: list[Notice]) -> None:
        for n in notices:
            if n.event == "reader_eof" and self.server:
                # The launcher hears of this process's end once, when every flow ended.
                self.log.info("flow_eof", **n.fields)
                if not all(p.done for p in self.programs):
                    continue
                n = Notice("info", "reader_eof", {
                    "flow": self.flow.name, "flows": [p.flow for p in self.programs],
                    "bytes": sum(p.c["bytes"] for p in self.programs),
                    "bad_bytes": sum(p.c["bad_bytes"] for p in self.programs)})
            self.notify(n.level, n.event, **n.fields)

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role != "stack" or all(p.done for p in self.programs):
            return
        self.gen = None
        self.waiting_rid = None
        self._notify([p.stack_died() for p in self.programs if not p.done])

    def on_stop(self, now: int) -> None:
        self.program.records.close()

    def counters(self) -> dict[str, Any]:
        if not self.server:
            return self.program.counters()
        per_flow = {p.flow: p.counters() for p in self.programs}
        total = {k: sum(p.c[k] for p in self.programs) for k in self.program.c}
        return {**total, "flow": self.flow.name, "flows": per_flow,
                "first_bad": next((p.first_bad for p in self.programs
                                   if p.first_bad is not None), None)}


def _file_bytes(path: str | None) -> bytes | None:
    """A flow's bytes when a real sender sends a file (validated with the scenario)."""
    return None if path is None else Path(path).read_bytes()
