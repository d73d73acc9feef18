"""``rxpath replay RUN_DIR``: run a recorded run's stack inputs through the stack model
again, in one process, and show that it gives back the same run.

Each stack process of a run recorded the order in which it handled its inputs, with
their times, and what the model answered (:mod:`actors.stack.record`). The replay feeds
that order to a fresh model (the same code the stack process calls) and compares every
reply, every batch of outputs (ACKs to the NIC, completed sleeps), every counter
snapshot, the stack's counters in ``counters.json`` and the bytes the readers recorded
in ``deliveries/``. It prints ``replay: identical: ...`` or the first divergence.

Not to be confused with ``rxpath run --wire pcap:FILE``, which replays a packet capture
as the wire of a new run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.reader.program import delivery_digest
from actors.stack.record import (
    EXIT,
    INPUTS,
    RECORD_DIR,
    SNAP,
    Record,
    RecordError,
    ReplayResult,
    flatten,
    read_record,
    replay,
    snapshot_json,
)
from cli.app import app
from cli.checker import load_deliveries
from cli.options import LATEST_RUN, RunDirArgument

EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2


@dataclass
class Incarnation:
    actor: str
    incarnation: int
    path: Path

    @property
    def label(self) -> str:
        return f"{self.actor}#{self.incarnation}"


def find_records(run_dir: Path) -> list[Incarnation]:
    """Every stack process's record in ``run_dir``, by actor, then incarnation."""
    out = []
    for path in (run_dir / RECORD_DIR).glob("*.msgpack"):
        actor, _, inc = path.stem.rpartition(".")
        if actor and inc.isdigit():
            out.append(Incarnation(actor, int(inc), path))
    return sorted(out, key=lambda i: (i.actor, i.incarnation))


def _t(now: int | None, t0: int | None) -> str:
    if now is None or t0 is None:
        return "before any input"
    return f"t=+{(now - t0) / 1e6:.3f} ms"


def _first_input_time(rec: Record) -> int | None:
    for r in rec.records:
        if r[0] != SNAP and len(r) > 1 and isinstance(r[1], int):
            return int(r[1])
    return None


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def compare_counters_json(run_dir: Path, rec: Record, last: bool) -> tuple[str | None, bool]:
    """Whether counters.json's stack counters are one of the record's snapshots (every
    one of which the replay reproduced): (a note, whether it is a failure)."""
    path = run_dir / "counters.json"
    if not path.is_file():
        return "no counters.json to compare", False
    stack = (json.loads(path.read_text()).get(rec.head.get("actor", "stack")) or {})
    role = stack.get("role")
    if not isinstance(role, dict):
        return "counters.json has no stack counters", False
    if int((stack.get("runtime") or {}).get("incarnation", -1)) != rec.head.get("incarnation"):
        return None, False  # another incarnation's: compared there
    want = snapshot_json(role)
    snaps = [snapshot_json(r[2]) for r in rec.records if r[0] == SNAP]
    if want in snaps:
        return f"counters.json = snapshot {snaps.index(want) + 1} of {len(snaps)}", False
    if not last or rec.ended is None:
        return "counters.json's stack counters are past the end of this record", False
    flat_want = flatten(want)
    nearest = snaps[-1] if snaps else {}
    diff = next((k for k in flat_want if flatten(nearest).get(k) != flat_want[k]), "?")
    return (f"counters.json's stack counters match no snapshot in the record (first "
            f"difference with the last one: {diff})"), True


def unrecorded_reasons(res: ReplayResult, recorded: set[tuple[str, int, int, str]]
                       ) -> dict[int, str]:
    """Why chunks the replay gives were never recorded by a reader, by chunk number: the
    reader died (its ``task_exit``) or the stack did (a record with no end) before the
    read that took them returned. Only a task's last chunks before that can be so."""
    exits: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(res.record.records):
        if r[0] == EXIT:
            exits[r[2]].append(i)
    killed = res.record.ended is None
    out: dict[int, str] = {}
    by_task: dict[str, list[int]] = defaultdict(list)
    for n, c in enumerate(res.chunks):
        by_task[c.task].append(n)
    for task, numbers in by_task.items():
        # Walk back from each boundary (an exit, or the end of a killed record) over the
        # chunks no reader recorded.
        bounds = [(i, "taken by a reader that died before recording them")
                  for i in exits.get(task, [])]
        if killed:
            bounds.append((len(res.record.records),
                           "taken by a read the stack's death cut short"))
        for bound, why in bounds:
            before = [n for n in numbers if res.chunks[n].index < bound]
            for n in reversed(before):
                c = res.chunks[n]
                if (c.flow or "", c.offset, len(c.data), delivery_digest(c.data)) in recorded:
                    break
                out.setdefault(n, why)
    return out


def compare_reader_bytes(run_dir: Path, results: list[ReplayResult], partial: str | None
                         ) -> tuple[list[str], list[str]]:
    """The chunks the replayed model gave each flow's readers against the chunks the
    readers recorded in deliveries/: (per-flow summaries, failures). ``partial`` says
    why the records replayed may not hold every chunk delivered (None: they must)."""
    records, bad = load_deliveries(run_dir)
    recorded = {(d.flow, d.off, d.length, d.digest) for d in records}
    delivered: dict[str, set[tuple[int, int, str]]] = defaultdict(set)
    for d in records:
        delivered[d.flow].add((d.off, d.length, d.digest))
    replayed: dict[str, set[tuple[int, int, str]]] = defaultdict(set)
    unrecorded: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failures = [f"deliveries: unreadable line {b}" for b in bad]
    for res in results:
        reasons = unrecorded_reasons(res, recorded)
        for n, c in enumerate(res.chunks):
            if c.flow is None:
                continue
            key = (c.offset, len(c.data), delivery_digest(c.data))
            if key in delivered[c.flow] or key in replayed[c.flow]:
                replayed[c.flow].add(key)
                continue
            replayed[c.flow].add(key)
            why = reasons.get(n)
            if why is None:
                failures.append(f"reader bytes {c.flow}: the replay gives {c.task} "
                                f"[{c.offset}, {c.offset + len(c.data)}) digest {key[2]} "
                                f"(record #{c.index}), which no reader recorded")
            else:
                unrecorded[c.flow][why] += len(c.data)
    summaries = []
    for flow in sorted(set(delivered) | set(replayed)):
        want = delivered.get(flow, set())
        missing = sorted(want - replayed.get(flow, set()))
        if missing and partial is None:
            off, n, dig = missing[0]
            failures.append(f"reader bytes {flow}: a reader recorded [{off}, {off + n}) "
                            f"digest {dig}, which the replay does not give")
        text = f"{flow} {sum(k[1] for k in want)}"
        for why, n in unrecorded.get(flow, {}).items():
            text += f" (+{n} {why})"
        if missing and partial is not None:
            text += f" (+{sum(k[1] for k in missing)} {partial})"
        summaries.append(text)
    return summaries, failures


@app.command("replay")
def replay_cmd(
    run_dir: RunDirArgument = LATEST_RUN,
    incarnation: Annotated[int | None, typer.Option(
        "--incarnation", metavar="N",
        help="Replay only this incarnation of the stack (after a restart, each process "
             "has its own record; default: all, one after another).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Replay a run's recorded stack inputs through the stack model and compare: exit 0
    if everything is identical, 1 at the first divergence (printed), 2 without a record."""
    found = find_records(run_dir)
    if incarnation is not None:
        found = [f for f in found if f.incarnation == incarnation]
    if not found:
        what = f"incarnation {incarnation} of the stack" if incarnation is not None else \
            "the stack"
        typer.echo(f"rxpath replay: {run_dir}/{RECORD_DIR}/ holds no record of {what} "
                   "(the run was made with RXPATH_STACK_RECORD=0, or by an older rxpath)",
                   err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    results: list[ReplayResult] = []
    report: dict[str, Any] = {"run_dir": str(run_dir), "incarnations": []}
    failures: list[str] = []
    counter_notes: list[str] = []
    partial = None if incarnation is None else "from incarnations not replayed"
    for n, inc in enumerate(found):
        try:
            rec = read_record(inc.path)
        except (RecordError, OSError) as err:
            typer.echo(f"rxpath replay: {err}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        ended = rec.ended
        if ended is None and partial is None:
            partial = "past the end of a record cut by a kill"
        line = (f"{inc.label}: {len(rec.records)} records, {rec.inputs} inputs, "
                f"{'closed (' + ended + ')' if ended else 'no end: the process was killed'}")
        if rec.truncated:
            line += f"; torn tail skipped: {rec.truncated}"
        if not json_out:
            typer.echo(line)
        res = replay(rec)
        results.append(res)
        t0 = _first_input_time(rec)
        entry: dict[str, Any] = {
            "actor": inc.actor, "incarnation": inc.incarnation, "path": str(inc.path),
            "records": len(rec.records), "inputs": res.inputs, "replies": res.replies,
            "outputs": res.outputs, "snapshots": res.snapshots,
            "counters_compared": res.counters_compared, "ended": ended,
            "truncated": rec.truncated}
        if res.divergence is not None:
            d = res.divergence
            text = (f"first divergence at record #{d.index} ({_t(d.now, t0)}, after "
                    f"{d.input}): {d.what}: expected {_short(d.expected)}, "
                    f"got {_short(d.got)}")
            failures.append(f"{inc.label}: {text}")
            entry["divergence"] = {"index": d.index, "now_ns": d.now, "what": d.what,
                                   "expected": _short(d.expected), "got": _short(d.got),
                                   "after": d.input}
        elif res.raised is not None:
            idx, exc = res.raised
            later = [i for i, r in enumerate(rec.records) if i > idx and r[0] in INPUTS]
            if not later and ended != "exit 0":
                counter_notes.append(f"{inc.label}: the model raises {exc} at input #{idx}, "
                                     "the last one the process recorded: the crash "
                                     "reproduces")
            else:
                failures.append(f"{inc.label}: the model raises {exc} at input #{idx}, "
                                "which the process got past")
            entry["raised"] = {"index": idx, "error": exc}
        else:
            note, bad = compare_counters_json(run_dir, rec, n == len(found) - 1)
            if note:
                (failures if bad else counter_notes).append(f"{inc.label}: {note}")
                entry["counters_json"] = note
        report["incarnations"].append(entry)
    summaries, byte_failures = ([], []) if failures else \
        compare_reader_bytes(run_dir, results, partial)
    failures += byte_failures
    inputs = sum(r.inputs for r in results)
    counted = results[-1].counters_compared if results else 0
    report.update(identical=not failures, failures=failures, notes=counter_notes,
                  reader_bytes=summaries)
    if json_out:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        for note in counter_notes:
            typer.echo(f"  {note}")
        if failures:
            typer.echo(f"replay: DIVERGED: {failures[0]}")
            for more in failures[1:]:
                typer.echo(f"  also: {more}")
        else:
            incs = f" over {len(results)} incarnations" if len(results) > 1 else ""
            outs = sum(r.outputs + r.replies for r in results)
            snaps = sum(r.snapshots for r in results)
            counters = (f"counters {counted}/{counted} equal ({snaps} snapshots)" if snaps
                        else "no counter snapshot in the record")
            typer.echo(f"replay: identical{incs}: {inputs} inputs, {outs} outputs, "
                       f"{counters}, reader bytes {' '.join(summaries) or '(none)'} equal")
    if failures:
        raise typer.Exit(EXIT_DIVERGED)
