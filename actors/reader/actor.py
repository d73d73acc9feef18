"""A reader process: a user program calling read() in a loop on its flow's socket.

It drives the ``tcp_recvmsg`` step machine one message per step, spends its think
time and copy cost in its own process (holding the socket lock where the kernel
would), and checks every byte it gets against the flow's payload.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Generator
from typing import Any

from actors.peer.payload import verify
from actors.reader.tcp_recvmsg import ReaderCosts, RecvFlags, RecvResult, Step, tcp_recvmsg
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope

STACK = "stack"
EAGAIN = 11
ECONNRESET = 104
RETRY_NS = 1_000_000  # a non-blocking reader polls again after 1 ms
# Trace names of the steps whose kernel name differs from the operation's.
STEP_NAMES = {"connect_flow": "accept"}


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
        # What this process delivered, for the checker: one JSON line per chunk, written
        # out after every read so that a SIGKILL loses at most the read in progress.
        dl = settings.run_dir / "deliveries"
        dl.mkdir(parents=True, exist_ok=True)
        self.delivery_log = open(  # noqa: SIM115 -- open for the life of the process
            dl / f"{self.name}.{settings.incarnation}.jsonl", "a", encoding="utf-8")

    def on_start(self, now: int) -> None:
        self.call_later(self.rc.start_ns, lambda t: self._op("connect_flow", 0,
                                                              {"sport": self.flow.sport}))

    def _op(self, op: str, sock: int, args: dict[str, Any]) -> None:
        rid = next(self.rids)
        self.waiting_rid = rid
        self.c["steps"] += 1
        if self.trace.on:
            # The step lasts until its answer: waiting for the lock or for data included.
            self.trace.begin("step", STEP_NAMES.get(op, op), self.clock(), "main",
                             args={"sock": sock})
        self.send(STACK, msg.SOCK_OP, {"request_id": rid, "op": op, "sock": sock, "args": args})

    @handles(msg.SOCK_OP_DONE)
    def on_done(self, env: Envelope, now: int) -> None:
        if env.body["request_id"] != self.waiting_rid:
            return
        self.waiting_rid = None
        if self.trace.on:
            self.trace.end("step", now)
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
        if self.trace.on:
            t = self.clock()
            self.trace.end("think", t)
            self.trace.begin("read", "tcp_recvmsg", t, "main", args={"len": self.rc.read_size})
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
            if self.trace.on:
                self.trace.begin("step", "copy to user" if args.get("why") == "copy"
                                 else "hold lock", self.clock(), "main")
            self.call_later(int(args["ns"]), self._local_step_done)
            return
        args = dict(args)
        self._op(name, args.pop("sock"), args)

    def _local_step_done(self, now: int) -> None:
        if self.trace.on:
            self.trace.end("step", now)
        self._advance({})

    def _finished(self, res: RecvResult) -> None:
        self.c["reads"] += 1
        if self.trace.on:
            self._trace_read_end(res)
        if res.ret > 0:
            self._record(res)
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

    def _trace_read_end(self, res: RecvResult) -> None:
        t = self.clock()
        self.trace.end("read", t, args={"ret": res.ret, "direct": res.direct,
                                        "steps": len(res.steps)})
        got = self.c["bytes"] + max(res.ret, 0)
        self.trace.counter(f"{self.flow.name} read", t, {"bytes": got})
        if res.ret == -EAGAIN:
            self.trace.begin("think", "EAGAIN: poll again later", t, "main")
        elif res.ret > 0 and self.rc.think_ns:
            self.trace.begin("think", "think", t, "main")

    def _record(self, res: RecvResult) -> None:
        lines = [json.dumps({"flow": self.flow.name, "off": off, "len": len(chunk),
                             "digest": delivery_digest(chunk)}, separators=(",", ":"))
                 for off, chunk in res.chunks]
        self.delivery_log.write("\n".join(lines) + "\n")
        self.delivery_log.flush()

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role != "stack" or self.done:
            return
        # The socket died with the stack: the next (or pending) read fails ECONNRESET.
        self.gen = None
        self.waiting_rid = None
        self.c["errors"] += 1
        self.done = True
        self.notify("error", "reader_error", flow=self.flow.name, error=-ECONNRESET,
                    reset=True, bytes=self.c["bytes"])

    def on_stop(self, now: int) -> None:
        self.delivery_log.close()

    def counters(self) -> dict[str, Any]:
        return {**self.c, "flow": self.flow.name, "first_bad": self.first_bad}


def delivery_digest(data: bytes) -> str:
    """The digest a delivery record carries (the checker recomputes it)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _locate(flow_id: int, near: int, chunk: bytes) -> int | None:
    """Where in the flow ``chunk`` really belongs (searching around ``near``), for reports."""
    from actors.peer.payload import payload_bytes
    lo = max(0, near - 256 * 1024)
    window = payload_bytes(flow_id, lo, 512 * 1024 + len(chunk))
    i = window.find(chunk[:64])
    return None if i < 0 else lo + i
