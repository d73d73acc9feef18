"""The user program around ``read()``: what it does with each read's result.

It checks every piece it gets against the flow's payload (by stream offset), keeps
the counters the run reports, writes the delivery records the checker reads, and says
when the program reads again: at once, after its think time, after a poll interval
(EAGAIN), or never (EOF, an error). Pure, apart from the record file it is given.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import IO, Any

from actors.peer.payload import first_difference, payload_bytes, verify
from actors.reader.tcp_recvmsg import RecvResult
from protocol.constants import EAGAIN, ECONNRESET

RETRY_NS = 1_000_000  # a non-blocking reader polls again after 1 ms


def delivery_digest(data: bytes) -> str:
    """The digest a delivery record carries (the checker recomputes it)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def locate(flow_id: int, near: int, chunk: bytes, content: bytes | None = None) -> int | None:
    """Where in the flow ``chunk`` really belongs (searching around ``near``), for reports."""
    lo = max(0, near - 256 * 1024)
    window = (payload_bytes(flow_id, lo, 512 * 1024 + len(chunk)) if content is None
              else content[lo:lo + 512 * 1024 + len(chunk)])
    i = window.find(chunk[:64])
    return None if i < 0 else lo + i


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the launcher should hear about (level, event, fields)."""

    level: str
    event: str
    fields: dict[str, Any]


@dataclass
class ReaderProgram:
    flow: str
    flow_id: int
    think_ns: int
    records: IO[str]  # one JSON line per piece delivered (the checker's input)
    c: dict[str, int] = field(default_factory=lambda: {
        "reads": 0, "bytes": 0, "eagain": 0, "direct_bytes": 0, "bad_bytes": 0, "eof": 0,
        "errors": 0, "steps": 0, "bad_results": 0})
    # The flow's bytes when they are not the generated payload (a file a real sender sent).
    content: bytes | None = None
    first_bad: int | None = None
    done: bool = False

    def read_done(self, res: RecvResult) -> tuple[int | None, list[Notice]]:
        """After one read(): when to read again (ns from now; None: stop), and notices."""
        c = self.c
        c["reads"] += 1
        notices: list[Notice] = []
        if res.ret > 0:
            self._record(res)
            for off, chunk in res.chunks:
                bad = (verify(self.flow_id, off, chunk) if self.content is None else
                       first_difference(self.content[off:off + len(chunk)], off, chunk))
                if bad is not None:
                    c["bad_bytes"] += 1
                    if self.first_bad is None:
                        self.first_bad = bad
                        notices.append(Notice("error", "bad_bytes", {
                            "flow": self.flow, "offset": bad, "chunk_offset": off,
                            "chunk_len": len(chunk),
                            "found_at": locate(self.flow_id, off, chunk, self.content),
                            "steps": res.steps[-12:]}))
            c["bytes"] += res.ret
            c["direct_bytes"] += res.direct
            return self.think_ns, notices
        if res.ret == 0:
            c["eof"] = 1
            self.done = True
            return None, [Notice("info", "reader_eof", {
                "flow": self.flow, "bytes": c["bytes"], "bad_bytes": c["bad_bytes"]})]
        if res.ret == -EAGAIN:
            c["eagain"] += 1
            return max(self.think_ns, RETRY_NS), []
        return None, [self.failed(res.ret)]

    def failed(self, error: int | str, **fields: Any) -> Notice:
        """The program gives up: the socket is gone or a call failed."""
        self.c["errors"] += 1
        self.done = True
        return Notice("error", "reader_error", {"flow": self.flow, "error": error, **fields})

    def stack_died(self) -> Notice:
        """The socket died with the stack: the next (or pending) read fails ECONNRESET."""
        return self.failed(-ECONNRESET, reset=True, bytes=self.c["bytes"])

    def _record(self, res: RecvResult) -> None:
        lines = [json.dumps({"flow": self.flow, "off": off, "len": len(chunk),
                             "digest": delivery_digest(chunk)}, separators=(",", ":"))
                 for off, chunk in res.chunks]
        self.records.write("\n".join(lines) + "\n")
        self.records.flush()

    def counters(self) -> dict[str, Any]:
        return {**self.c, "flow": self.flow, "first_bad": self.first_bad}
