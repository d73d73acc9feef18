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
the stack = segments through ``tcp_v4_rcv`` + frames waiting. After a nic, cpu or stack
process was killed, the same holds with each killed process's last heartbeat standing in
for it and what it lost since that report named (:func:`conservation_across_restarts`).
A flow whose sender died for good is cut short, not failed, and the verdict says so.

A run stopped (by its duration) before its flows ended is judged as it stands: what was
delivered so far must be an exact prefix of each stream (no byte altered, reordered,
duplicated, and no gap but the not-yet-delivered tail), and conservation counts what was
still in flight at the stop (sent by one box, not yet counted by the next: the final
snapshots are then taken downstream first, so that difference cannot be negative).

The run's one verdict (:attr:`Verdict.state`, ``summary["verdict"]``, what every report
shows and the exit status, :data:`EXIT_STATUS`): **PASS** nothing went wrong and every
flow ended (delivered whole, reset, or cut short by its sender's death); **FAIL** a byte
went wrong or a frame is unaccounted for; **INCOMPLETE** nothing went wrong so far, but
the run stopped before some flow ended.

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


PASS, FAIL, INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"
# The exit status of `rxpath run`, `chaos` and `coordinate` for each verdict (2 is a bad
# config; coordinate's 3 is "the actors never came up").
EXIT_STATUS = {PASS: 0, FAIL: 1, INCOMPLETE: 4}

# A flow's state, as every report shows it.
INTACT, BROKEN, FLOW_INCOMPLETE, RESET, CUT_SHORT = (
    "intact", "BROKEN", "incomplete", "reset", "cut short")


@dataclass
class FlowVerdict:
    flow: str
    expected: int
    delivered: int = 0
    ok: bool = True
    reset: bool = False
    delivered_then_lost: int = 0
    incomplete: bool = False     # ok so far, its tail not delivered when the run stopped
    state: str = INTACT          # intact | BROKEN | incomplete | reset | cut short
    problems: list[str] = field(default_factory=list)
    # or "capture" (a replay, checked against the capture's stream) or "file" (the file a
    # real sender sent)
    reference: str = "payload"
    sha256: str | None = None    # of the capture's stream (a replay)
    cut_short_by: str = ""       # the dead sender's processes, if it died mid-stream

    def fail(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)

    def judge(self) -> str:
        """Set and return :attr:`state` from what was found."""
        self.state = (BROKEN if not self.ok else RESET if self.reset
                      else CUT_SHORT if self.cut_short_by
                      else FLOW_INCOMPLETE if self.incomplete else INTACT)
        return self.state


@dataclass
class Verdict:
    ok: bool
    flows: list[FlowVerdict]
    conservation: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    state: str = ""          # PASS | FAIL | INCOMPLETE (see the module docstring)
    why: str = ""            # one line: the first witness, or what is still missing

    def __post_init__(self) -> None:
        if not self.state:
            self.state, self.why = judge(self.ok, self.flows, self.conservation,
                                         self.notes)

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.state]

    def headline(self) -> dict[str, str]:
        """``summary["verdict"]``: what every consumer of a run shows."""
        return {"state": self.state, "why": self.why}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "state": self.state, "why": self.why,
                "conservation": self.conservation, "notes": self.notes,
                "flows": [vars(f) for f in self.flows]}


def judge(ok: bool, flows: Sequence[FlowVerdict], conservation: Mapping[str, Any],
          notes: Sequence[str]) -> tuple[str, str]:
    """(state, why) of a run from its flows' verdicts and its conservation."""
    for f in flows:
        f.judge()
    if not ok:
        for f in flows:
            if not f.ok:
                return FAIL, f"{f.flow}: {f.problems[0]}"
        for w in conservation.get("witnesses") or []:
            return FAIL, f"conservation: {w}"
        for name, (a, b) in (conservation.get("equations") or {}).items():
            if a != b:
                return FAIL, f"conservation: {name}: {a} != {b}"
        return FAIL, (notes[0] if notes else "the checker found a fault")
    short = [f for f in flows if f.state == FLOW_INCOMPLETE]
    if short:
        flight = conservation.get("in_flight")
        return INCOMPLETE, (
            "stopped before every flow ended: "
            + ", ".join(f"{f.flow} {f.delivered}/{f.expected} bytes" for f in short)
            + " delivered, an exact prefix so far"
            + (f"; {flight} frames in flight at the stop" if flight else ""))
    ended = [f"{f.flow} {f.state}" for f in flows if f.state != INTACT]
    return PASS, ("every flow delivered exactly" if not ended else
                  "every byte delivered exactly (" + ", ".join(ended) + ")")


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
               complete_expected: bool = True, reference: bytes | None = None,
               reference_kind: str = "capture") -> FlowVerdict:
    """The four stream properties of one flow (see the module docstring); ``reference``
    the bytes the flow carried, when they are not the peer's payload (a replay)."""
    v = FlowVerdict(flow, expected, reset=reset)
    if reference is not None:
        v.reference, v.sha256 = reference_kind, hashlib.sha256(reference).hexdigest()
    # Altered.
    for r in records:
        if r.off < 0 or r.length <= 0 or r.end > expected:
            v.fail(f"impossible range: {r.where()} (flow is {expected} bytes)")
            continue
        sent = (payload_bytes(flow_id, r.off, r.length) if reference is None
                else reference[r.off:r.end])
        want = delivery_digest(sent)
        if want != r.digest:
            who = ("the peer sent" if reference is None else "the capture has"
                   if reference_kind == "capture" else "the sender's file has")
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
            v.incomplete = True
            v.problems.append(f"incomplete: [{tail[0]}, {tail[1]}) not delivered when "
                              "the run ended")
    v.judge()
    return v


def check_conservation(counters: Mapping[str, Any], cpus: Iterable[str], *,
                       complete: bool = True) -> dict[str, Any]:
    """Frame conservation nic -> cpus -> stack from final counters. ``complete``: the
    run ended with its flows (the path was quiet at the snapshots); if not, what one box
    sent and the next had not yet counted is in flight (snapshots downstream first, so
    it cannot be negative) and named as such."""
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
    in_flight: dict[str, int] = {}
    if not complete:
        for name in ("nic rx_packets = cpus' frames in",
                     "frames to stack = tcp_v4_rcv segments + waiting"):
            sent, got = equations.pop(name)
            # More arrived than left would be frames from nowhere: no flight explains it.
            flight = in_flight[name.split(" = ")[0]] = max(0, sent - got)
            equations[name + " + in flight"] = (sent, got + flight)
    ok = all(a == b for a, b in equations.values())
    extra: dict[str, Any] = {}
    if not complete:
        extra = {"in_flight": sum(in_flight.values()), "in_flight_by_edge": in_flight}
    return {"ok": ok, "checked": True, **extra,
            "wire_frames": dmad + int(eth.get("rx_missed_errors", 0)),
            "rx_missed_errors": int(eth.get("rx_missed_errors", 0)),
            "dropped_in_cpus": cpu_drops, "in_rings": in_rings, "to_stack": cpu_out,
            "tcp_v4_rcv": int(stack.get("segments", 0)),
            "equations": {k: list(v) for k, v in equations.items()}}


# --- conservation across restarts ------------------------------------------------------
#
# A killed process's counters survive as its last heartbeat (counters.json: an actor's
# "incarnations", from the launcher). The receive path is a chain of boxes, wire ->
# nic -> cpus -> stack; each report of a box balances on its own (in = dropped + held +
# out). A box none of whose processes died is exact. For a box that lost a process, what
# crossed its edges is read on the other side of each edge (a box that never died), and
# what went in but neither came out nor was counted dropped or held by a living process
# died with the killed process after its last report: ``lost_since_last_report``. That is
# (held at the last report) + (entered after it) - (left after it), so it cannot be
# negative, and neither can "entered after" or "left after". Neighbouring boxes that both
# lost a process are taken as one (the edge between them is known on neither side).

# How the equations name each box's edges and its drops + held frames.
_INTO = {"nic": "wire frames to the nic", "cpu": "nic rx_packets",
         "stack": "frames to stack"}
_OUT = {"nic": "frames DMA'd", "cpu": "frames to stack", "stack": "tcp_v4_rcv segments"}
_KEPT = {"nic": "rx_missed_errors", "cpu": "cpus' drops + rings", "stack": "waiting"}


@dataclass
class _Box:
    name: str
    members: list[str]
    reported_in: int = 0
    reported_out: int = 0
    dropped: int = 0          # reported drops, every incarnation
    held_living: int = 0      # held by a living process at its final report
    held_dead: int = 0        # held by a killed process at its last report
    killed: list[str] = field(default_factory=list)
    unbalanced: list[str] = field(default_factory=list)


def _box_figures(box: str, r: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(in, dropped, held, out) of one report of ``box``."""
    if box == "nic":
        eth = r.get("ethtool") or {}
        dmad, missed = int(eth.get("rx_packets", 0)), int(eth.get("rx_missed_errors", 0))
        return dmad + missed, missed, 0, dmad
    if box == "cpu":
        # frames_abandoned are inside frames_to_stack: they went to a stack that died.
        dropped = (sum(int(n) for n in (r.get("ip_drops") or {}).values())
                   + int(r.get("dma_overruns", 0)) + int(r.get("frames_lost_in_reset", 0)))
        return (int(r.get("frames_in", 0)), dropped, int(r.get("ring_frames", 0)),
                int(r.get("frames_to_stack", 0)))
    # The stack: what it took from batches went through tcp_v4_rcv; the rest waits.
    waiting, segs = int(r.get("frames_waiting", 0)), int(r.get("segments", 0))
    return segs + waiting, 0, waiting, segs


def incarnation_reports(counters: Mapping[str, Any], name: str
                        ) -> list[tuple[int, bool, Mapping[str, Any]]]:
    """(incarnation, alive, role counters) of every process ``name`` had: each killed
    one's last report, then the living one's final counters."""
    entry = counters.get(name) or {}
    dead = entry.get("incarnations") or []
    out = [(int(d.get("incarnation", 0)), False, d.get("role") or {}) for d in dead]
    current = int((entry.get("runtime") or {}).get("incarnation", 0))
    if entry.get("role") is not None and current not in {i for i, _, _ in out}:
        out.append((current, True, entry["role"]))
    return out


def _gather(counters: Mapping[str, Any], box: str, members: Sequence[str]) -> _Box:
    b = _Box(box, list(members))
    for name in members:
        for inc, alive, r in incarnation_reports(counters, name):
            i, d, h, o = _box_figures(box, r)
            b.reported_in += i
            b.dropped += d
            b.reported_out += o
            if alive:
                b.held_living += h
            else:
                b.held_dead += h
                b.killed.append(f"{name}#{inc}")
            if i != d + h + o:
                b.unbalanced.append(f"{name}#{inc}: in {i} != dropped {d} + held {h} + "
                                    f"out {o}")
    return b


def conservation_across_restarts(counters: Mapping[str, Any], cpus: Iterable[str], *,
                                 wire_sender: str = "peer", complete: bool = True
                                 ) -> dict[str, Any]:
    """Frame conservation nic -> cpus -> stack when processes of the chain were killed
    (see the comment above); ``wire_sender``: the actor whose ``frames_out`` counts what
    the wire delivered to the nic."""
    boxes = [_gather(counters, "nic", ["nic"]), _gather(counters, "cpu", list(cpus)),
             _gather(counters, "stack", ["stack"])]
    sender = [(alive, r) for _, alive, r in incarnation_reports(counters, wire_sender)]
    sender_frames: int | None = None
    if sender and all("frames_out" in (r.get("peer") or {}) for _, r in sender):
        sender_frames = sum(int(r["peer"]["frames_out"]) for _, r in sender)
    sender_exact = bool(sender) and all(alive for alive, _ in sender)
    equations: dict[str, tuple[int, int]] = {}
    witnesses: list[str] = []
    notes: list[str] = []
    lost: dict[str, int | None] = {}
    detail: dict[str, dict[str, Any]] = {}
    in_flight = 0
    for b in boxes:
        witnesses.extend(f"unbalanced report {u}" for u in b.unbalanced)
    # Edges between two boxes that both kept every process: exact on both sides.
    edge_names = ("nic rx_packets = cpus' frames in",
                  "frames to stack = tcp_v4_rcv segments + waiting")
    for k, name in enumerate(edge_names):
        up, down = boxes[k], boxes[k + 1]
        if up.killed or down.killed:
            continue
        if up.reported_out == down.reported_in or (
                not complete and up.reported_out > down.reported_in):
            in_flight += up.reported_out - down.reported_in
            equations[name] = (up.reported_out, up.reported_out)
        else:
            equations[name] = (up.reported_out, down.reported_in)
    # Groups of neighbouring boxes that lost a process.
    k = 0
    while k < len(boxes):
        if not boxes[k].killed:
            k += 1
            continue
        j = k
        while j + 1 < len(boxes) and boxes[j + 1].killed:
            j += 1
        group = boxes[k:j + 1]
        label = "+".join(b.name for b in group)
        first, last = group[0], group[-1]
        entered: int | None
        if k == 0:
            entered = sender_frames if sender_exact else None
        else:
            entered = boxes[k - 1].reported_out
        sink = j == len(boxes) - 1
        left = last.reported_out if sink else boxes[j + 1].reported_in
        dropped = sum(b.dropped for b in group)
        held = sum(b.held_living for b in group)
        killed = [p for b in group for p in b.killed]
        if entered is None:
            lost[label] = None
            why = ("the wire's sender died too" if sender else
                   "nothing counts what the wire delivered")
            notes.append(f"conservation: {', '.join(killed)} killed; frames lost with "
                         f"the {label} since the last report not bounded ({why})")
            detail[label] = {"killed": killed, "entered": None, "left": left}
            k = j + 1
            continue
        after_in = entered - first.reported_in
        after_out = 0 if sink else left - last.reported_out
        n = entered - left - dropped - held
        lost[label] = n
        detail[label] = {"killed": killed, "entered": entered, "left": left,
                         "dropped": dropped, "held": held,
                         "held_at_last_report": sum(b.held_dead for b in group),
                         "entered_after_last_report": after_in,
                         "left_after_last_report": after_out, "lost": n}
        kept = " + ".join(_KEPT[b.name] for b in group)
        equations[f"{_INTO[first.name]} = {kept} + {_OUT[last.name]} + lost with killed "
                  f"{', '.join(killed)}"] = (entered, dropped + held + left + n)
        # Fewer frames reaching the next box than the killed process had counted as sent:
        # its last report was out before those messages left it, and SIGKILL discarded
        # its send queue. They are among the ``n`` lost; only a negative ``n`` (or more
        # entering after the report than before) would be impossible.
        unsent = max(0, -after_out)
        detail[label]["lost_in_send_queue"] = unsent
        for what, value in (("entered after its last report", after_in),
                            ("lost with the process", n)):
            if value < 0:
                witnesses.append(f"killed {label} ({', '.join(killed)}): {value} frames "
                                 f"{what} (cannot be negative)")
        then = detail[label]["held_at_last_report"]
        if len(group) > 1:  # the edge inside the group is counted by neither side
            how = f"what crossed from {first.name} to {last.name} is counted by neither"
        elif sink:
            how = f"{then} waiting then, {after_in} handed to it after it"
        elif unsent:
            how = (f"{then} held then, {after_in} entered after it, and {unsent} it had "
                   f"counted as sent never reached the {boxes[j + 1].name}: its send queue")
        else:
            how = f"{then} held then, {after_in} entered and {after_out} left after it"
        reports = "its last report" if len(killed) == 1 else "their last reports"
        notes.append(f"conservation: {', '.join(killed)} killed: {n} frames lost with "
                     f"the {label} since {reports} ({how})")
        k = j + 1
    ok = not witnesses and all(a == b for a, b in equations.values())
    nic, cpu, stack = boxes
    out: dict[str, Any] = {
        "ok": ok, "checked": True, "across_restarts": True,
        "killed": {b.name: b.killed for b in boxes if b.killed},
        "lost_since_last_report": lost, "detail": detail, "witnesses": witnesses,
        "notes": notes, "wire_frames": nic.reported_in,
        "rx_missed_errors": nic.dropped, "dropped_in_cpus": cpu.dropped,
        "in_rings": cpu.held_living,
        # Read on the side that kept its counters whole.
        "to_stack": (stack.reported_in if cpu.killed and not stack.killed
                     else cpu.reported_out),
        "tcp_v4_rcv": stack.reported_out,
        "equations": {k2: list(v) for k2, v in equations.items()}}
    if in_flight:
        out["in_flight"] = in_flight
    return out


def chain_lost_a_process(counters: Mapping[str, Any], cpus: Iterable[str]) -> bool:
    """Did a nic, cpu or stack process die (its last report kept in counters.json)?"""
    return any((counters.get(n) or {}).get("incarnations") for n in ("nic", *cpus, "stack"))


def senders_that_died(counters: Mapping[str, Any], wire_sender: str = "peer") -> list[str]:
    """The wire sender's processes that died and were not replaced (``peer#0``)."""
    reports = incarnation_reports(counters, wire_sender)
    if not reports or reports[-1][1]:
        return []
    return [f"{wire_sender}#{inc}" for inc, _, _ in reports]


def check_run(run_dir: Path, flows: Sequence[tuple[str, int, int]], *,
              counters: Mapping[str, Any] | None = None, cpus: Sequence[str] = (),
              resets: Iterable[str] = (), reader_deaths: Mapping[str, int] | None = None,
              restarted_roles: Iterable[str] = (), complete_expected: bool = True,
              references: Mapping[str, bytes] | None = None,
              reference_kind: str = "capture", path_quiet: bool = True) -> Verdict:
    """Check a finished run. ``flows``: (name, flow id, bytes) of each flow;
    ``references``: per flow, the bytes it carried when not the peer's payload (a
    ``reference_kind``: "capture" replayed, or a "file" a real sender sent);
    ``path_quiet``: frames had stopped moving when the counters were taken (if not, the
    conservation equations allow for what was between two boxes)."""
    records, bad = load_deliveries(run_dir)
    reset = set(resets)
    deaths = reader_deaths or {}
    verdicts = []
    notes = list(f"unreadable delivery record: {b}" for b in bad)
    # A sender that died for good ends its streams where it stopped sending: as after a
    # reset, the rest never comes (the receiver's sockets stay open, as Linux's do).
    gone = senders_that_died(counters) if counters is not None else []
    for name, flow_id, size in flows:
        mine = [r for r in records if r.flow == name]
        v = check_flow(name, flow_id, size, mine, reset=name in reset,
                       reader_deaths=deaths.get(name, 0),
                       complete_expected=complete_expected and not gone,
                       reference=(references or {}).get(name),
                       reference_kind=reference_kind)
        short = size - max((r.end for r in mine), default=0)
        if gone and short > 0 and not v.reset:
            v.cut_short_by = ", ".join(gone)
            notes.append(f"{name} cut short by the sender's death ({v.cut_short_by} "
                         f"killed): {short} of its {size} bytes not delivered")
        verdicts.append(v)
    known = {n for n, _, _ in flows}
    strangers = sorted({r.flow for r in records} - known)
    if strangers:
        notes.append(f"records for unknown flows: {', '.join(strangers)}")
    restarted = set(restarted_roles) & {"nic", "cpu", "stack"}
    if counters is None:
        conservation: dict[str, Any] = {"ok": True, "checked": False,
                                        "why": "no counters"}
    elif chain_lost_a_process(counters, cpus):
        conservation = conservation_across_restarts(counters, cpus,
                                                    complete=complete_expected and path_quiet)
        notes.extend(conservation["notes"])
        notes.extend(f"conservation witness: {w}" for w in conservation["witnesses"])
    elif restarted:
        # Only without the launcher's record of each incarnation's last report.
        conservation = {"ok": True, "checked": False,
                        "why": "counters of killed " + ", ".join(sorted(restarted))
                               + " processes died with them"}
    else:
        conservation = check_conservation(counters, cpus,
                                          complete=complete_expected and path_quiet)
    ok = all(v.ok for v in verdicts) and conservation["ok"] and not bad and not strangers
    return Verdict(ok, verdicts, conservation, notes)


def format_verdict(v: Verdict) -> str:
    """A few lines for the end of a run: the verdict, then a witness per failure."""
    lines = [f"checker: {v.state}: {v.why}"]
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
        elif f.reference == "file":
            extra.append(f"checked against the sender's file, {f.expected} bytes, "
                         f"sha256 {f.sha256}")
        lines.append(f"  {f.flow}: {f.state}, {f.delivered}/{f.expected} bytes delivered"
                     + (f" ({'; '.join(extra)})" if extra else ""))
        lines.extend(f"    witness: {p}" if not f.ok else f"    note: {p}"
                     for p in f.problems)
    c = v.conservation
    if c.get("checked"):
        flight = (f" ({c['in_flight']} frames in flight at the stop)"
                  if c.get("in_flight") else "")
        lines.append(f"  conservation: {'ok' if c['ok'] else 'BROKEN'}{flight}")
        for name, (a, b) in c["equations"].items():
            if a != b:
                lines.append(f"    witness: {name}: {a} != {b}")
    else:
        lines.append(f"  conservation: not checked ({c.get('why')})")
    lines.extend(f"  note: {n}" for n in v.notes)
    return "\n".join(lines)


def summary_verdict(summary: Mapping[str, Any]) -> dict[str, str]:
    """A run's one verdict as summary.json holds it, for every consumer (reports, diff,
    compose); a summary written before ``verdict`` existed falls back to its checker."""
    v = summary.get("verdict")
    if isinstance(v, Mapping) and v.get("state") in EXIT_STATUS:
        return {"state": str(v["state"]), "why": str(v.get("why", ""))}
    checker = summary.get("checker") or {}
    ok = bool(checker.get("ok", summary.get("integrity")) and summary.get("integrity", True))
    return {"state": PASS if ok else FAIL, "why": ""}


def flow_state(flow: Mapping[str, Any]) -> str:
    """A summary flow's state (intact, BROKEN, incomplete, reset, cut short)."""
    return str(flow.get("verdict") or (INTACT if flow.get("intact") else BROKEN))
