"""The checker: proves from what the readers recorded that no byte went wrong.

Every reader process appends one JSON line per delivered chunk to
``<run>/deliveries/<reader>.<incarnation>.jsonl``: ``{"flow", "off", "len", "digest"}``.
After a run :func:`check_run` proves, per flow:

* none altered: each record's digest equals the digest of the payload the peer sent at
  that offset (:mod:`actors.peer.payload`);
* none reordered: within one reader process, offsets only increase, chunk after chunk;
* none duplicated: no two records (of any reader of the flow) overlap;
* no gap, except (a) after a reported reset (the stream ends there) or (b) bytes a
  reader process took and then died with: those are *delivered-then-lost*, at most one
  gap per reader death, and reported as such.

It also checks frame conservation on the receive path, from the final counters:
frames the nic DMA'd = frames the cpus received; each cpu's frames = DMA overruns +
frames in its ring + ``ip_rcv`` drops + frames handed to the stack; frames handed to
the stack = segments through ``tcp_v4_rcv`` + frames waiting. Counters of a killed
process die with it, so after a restart of nic, cpu or stack it says so instead.

Each failure comes with a minimal witness: the one or two records that prove it.

A replay of a capture (``[wire] source = "pcap:FILE"``) carries the capture's bytes, not
the peer's payload: there the reference of each flow is the client's stream rebuilt from
the capture (``references``), and the verdict gives its length and SHA-256. Every
delivered chunk's digest matching that stream at its offset, with no gap and no overlap,
means the readers got exactly those bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.peer.payload import payload_bytes
from actors.reader.actor import delivery_digest


@dataclass(frozen=True)
class Delivery:
    """One chunk a reader process delivered to its user."""

    reader: str
    incarnation: int
    flow: str
    off: int
    length: int
    digest: str
    line: int = 0

    @property
    def end(self) -> int:
        return self.off + self.length

    def where(self) -> str:
        return (f"{self.reader}#{self.incarnation} line {self.line}: "
                f"[{self.off}, {self.end}) digest {self.digest}")


@dataclass
class FlowVerdict:
    flow: str
    expected: int
    delivered: int = 0
    ok: bool = True
    reset: bool = False
    delivered_then_lost: int = 0
    problems: list[str] = field(default_factory=list)
    reference: str = "payload"  # or "capture": a replay, checked against the capture's stream
    sha256: str | None = None    # of the capture's stream (a replay)

    def fail(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


@dataclass
class Verdict:
    ok: bool
    flows: list[FlowVerdict]
    conservation: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "conservation": self.conservation, "notes": self.notes,
                "flows": [vars(f) for f in self.flows]}


def load_deliveries(run_dir: Path) -> tuple[list[Delivery], list[str]]:
    """Every delivery record of the run, and the lines that could not be read."""
    out: list[Delivery] = []
    bad: list[str] = []
    for path in sorted((run_dir / "deliveries").glob("*.jsonl")):
        reader, _, inc = path.stem.rpartition(".")
        lines = path.read_text(encoding="utf-8").split("\n")
        for i, text in enumerate(lines, 1):
            if not text:
                continue
            try:
                r = json.loads(text)
                out.append(Delivery(reader, int(inc), str(r["flow"]), int(r["off"]),
                                    int(r["len"]), str(r["digest"]), i))
            except (ValueError, KeyError, TypeError):
                # A torn last line is what a SIGKILL mid-write leaves: not a delivery.
                if i < len(lines) - 1:
                    bad.append(f"{path.name} line {i}: {text[:80]!r}")
    return out, bad


def check_flow(flow: str, flow_id: int, expected: int, records: Sequence[Delivery], *,
               reset: bool = False, reader_deaths: int = 0,
               complete_expected: bool = True, reference: bytes | None = None) -> FlowVerdict:
    """The four stream properties of one flow (see the module docstring); ``reference``
    the bytes the flow carried, when they are not the peer's payload (a replay)."""
    v = FlowVerdict(flow, expected, reset=reset)
    if reference is not None:
        v.reference, v.sha256 = "capture", hashlib.sha256(reference).hexdigest()
    # Altered.
    for r in records:
        if r.off < 0 or r.length <= 0 or r.end > expected:
            v.fail(f"impossible range: {r.where()} (flow is {expected} bytes)")
            continue
        sent = (payload_bytes(flow_id, r.off, r.length) if reference is None
                else reference[r.off:r.end])
        want = delivery_digest(sent)
        if want != r.digest:
            who = "the peer sent" if reference is None else "the capture has"
            v.fail(f"altered: {r.where()}; {who} digest {want} there")
    # Reordered, per reader process, in the order it delivered.
    by_proc: dict[tuple[str, int], list[Delivery]] = {}
    for r in records:
        by_proc.setdefault((r.reader, r.incarnation), []).append(r)
    for recs in by_proc.values():
        recs.sort(key=lambda r: r.line)
        for a, b in itertools.pairwise(recs):
            if b.off < a.end:
                v.fail(f"reordered: {b.where()} came after {a.where()}")
                break
    # Duplicated, across every reader of the flow.
    ordered = sorted(records, key=lambda r: (r.off, r.end))
    for a, b in itertools.pairwise(ordered):
        if b.off < a.end:
            v.fail(f"duplicated: [{b.off}, {min(a.end, b.end)}) in {a.where()} "
                   f"and {b.where()}")
            break
    # Gaps.
    v.delivered = sum(r.length for r in records)
    gaps: list[tuple[int, int]] = []
    pos = 0
    for r in ordered:
        if r.off > pos:
            gaps.append((pos, r.off))
        pos = max(pos, r.end)
    tail = (pos, expected) if pos < expected else None
    if len(gaps) > reader_deaths:
        first = gaps[reader_deaths]
        v.fail(f"gap: bytes [{first[0]}, {first[1]}) never delivered "
               f"({len(gaps)} gaps, {reader_deaths} reader deaths to explain them)")
    else:
        v.delivered_then_lost = sum(b - a for a, b in gaps)
    if tail is not None and not reset:
        if complete_expected:
            v.fail(f"gap: bytes [{tail[0]}, {tail[1]}) never delivered and no reset "
                   "was reported")
        else:
            v.problems.append(f"incomplete: [{tail[0]}, {tail[1]}) not delivered when "
                              "the run ended")
    return v


def check_conservation(counters: Mapping[str, Any], cpus: Iterable[str]) -> dict[str, Any]:
    """Frame conservation nic -> cpus -> stack from final counters."""
    def role(name: str) -> dict[str, Any]:
        return (counters.get(name) or {}).get("role") or {}

    nic, stack = role("nic"), role("stack")
    eth = nic.get("ethtool") or {}
    dmad = int(eth.get("rx_packets", 0))
    cpu_in = cpu_out = cpu_drops = in_rings = 0
    for c in cpus:
        r = role(c)
        cpu_in += int(r.get("frames_in", 0))
        cpu_out += int(r.get("frames_to_stack", 0))
        ip = sum(int(n) for n in (r.get("ip_drops") or {}).values())
        cpu_drops += ip + int(r.get("dma_overruns", 0)) + int(r.get("frames_abandoned", 0))
        in_rings += int(r.get("ring_frames", 0))
    stack_in = int(stack.get("segments", 0)) + int(stack.get("frames_waiting", 0))
    equations = {
        "nic rx_packets = cpus' frames in": (dmad, cpu_in),
        "cpus' frames in = dropped + in rings + to stack": (
            cpu_in, cpu_drops + in_rings + cpu_out),
        "frames to stack = tcp_v4_rcv segments + waiting": (cpu_out, stack_in),
    }
    ok = all(a == b for a, b in equations.values())
    return {"ok": ok, "checked": True, "wire_frames": dmad + int(eth.get("rx_missed_errors", 0)),
            "rx_missed_errors": int(eth.get("rx_missed_errors", 0)),
            "dropped_in_cpus": cpu_drops, "in_rings": in_rings, "to_stack": cpu_out,
            "tcp_v4_rcv": int(stack.get("segments", 0)),
            "equations": {k: list(v) for k, v in equations.items()}}


def check_run(run_dir: Path, flows: Sequence[tuple[str, int, int]], *,
              counters: Mapping[str, Any] | None = None, cpus: Sequence[str] = (),
              resets: Iterable[str] = (), reader_deaths: Mapping[str, int] | None = None,
              restarted_roles: Iterable[str] = (), complete_expected: bool = True,
              references: Mapping[str, bytes] | None = None) -> Verdict:
    """Check a finished run. ``flows``: (name, flow id, bytes) of each flow;
    ``references``: per flow, the bytes it carried when not the peer's payload."""
    records, bad = load_deliveries(run_dir)
    reset = set(resets)
    deaths = reader_deaths or {}
    verdicts = []
    notes = list(f"unreadable delivery record: {b}" for b in bad)
    for name, flow_id, size in flows:
        mine = [r for r in records if r.flow == name]
        verdicts.append(check_flow(name, flow_id, size, mine, reset=name in reset,
                                   reader_deaths=deaths.get(name, 0),
                                   complete_expected=complete_expected,
                                   reference=(references or {}).get(name)))
    known = {n for n, _, _ in flows}
    strangers = sorted({r.flow for r in records} - known)
    if strangers:
        notes.append(f"records for unknown flows: {', '.join(strangers)}")
    restarted = set(restarted_roles) & {"nic", "cpu", "stack"}
    if counters is None:
        conservation: dict[str, Any] = {"ok": True, "checked": False,
                                        "why": "no counters"}
    elif restarted:
        conservation = {"ok": True, "checked": False,
                        "why": "counters of killed " + ", ".join(sorted(restarted))
                               + " processes died with them"}
    else:
        conservation = check_conservation(counters, cpus)
    ok = all(v.ok for v in verdicts) and conservation["ok"] and not bad and not strangers
    return Verdict(ok, verdicts, conservation, notes)


def format_verdict(v: Verdict) -> str:
    """A few lines for the end of a run: the verdict, then a witness per failure."""
    lines = [f"checker: {'PASS' if v.ok else 'FAIL'}"]
    for f in v.flows:
        extra = []
        if f.reset:
            extra.append("reset reported")
        if f.delivered_then_lost:
            extra.append(f"{f.delivered_then_lost} bytes delivered-then-lost "
                         "(reader died holding them)")
        if f.reference == "capture":
            extra.append(f"replay check: the capture's stream, {f.expected} bytes, "
                         f"sha256 {(f.sha256 or '')[:16]}")
        state = "ok" if f.ok else "WRONG"
        lines.append(f"  {f.flow}: {state}, {f.delivered}/{f.expected} bytes delivered"
                     + (f" ({'; '.join(extra)})" if extra else ""))
        lines.extend(f"    witness: {p}" if not f.ok else f"    note: {p}"
                     for p in f.problems)
    c = v.conservation
    if c.get("checked"):
        lines.append(f"  conservation: {'ok' if c['ok'] else 'BROKEN'}")
        for name, (a, b) in c["equations"].items():
            if a != b:
                lines.append(f"    witness: {name}: {a} != {b}")
    else:
        lines.append(f"  conservation: not checked ({c.get('why')})")
    lines.extend(f"  note: {n}" for n in v.notes)
    return "\n".join(lines)
