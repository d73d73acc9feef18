"""The stack's input record and ``rxpath replay``: the record format (frames, a torn
tail), a real multiprocess run replayed identically, a tampered record's first
divergence, and chaos runs (stack or reader killed) replayed."""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from actors.runtime.supervisor import RestartPolicy
from actors.scenario import Scenario
from actors.stack import record as R
from cli.chaos import ChaosAction, ChaosRunner
from cli.config import load_scenario
from cli.main import app
from cli.run import run_scenario
from tests.chaos_helpers import alive
from tests.conftest import _short_run_dir

runner = CliRunner()


def replay_cli(run_dir: Path, *args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["replay", str(run_dir), *args])
    return res.exit_code, res.output


# --- the format ------------------------------------------------------------------------


def write_record(path: Path, records: list[tuple[Any, ...]], *, frame_every: int = 2,
                 end: str | None = "exit 0") -> None:
    w = R.RecordWriter(path, {"actor": "stack", "incarnation": 0, "scenario": {}})
    for i, r in enumerate(records, 1):
        w.pack(r)
        if i % frame_every == 0:
            w.flush()
    if end is None:
        w.flush()
    else:
        w.close(end)


RECORDS = [(R.SEG, 10 + i, bytes([i]) * 40) for i in range(7)] + [(R.TIMERS, 99)]


def test_a_record_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "stack.0.msgpack"
    write_record(path, RECORDS)
    rec = R.read_record(path)
    assert rec.head == {"actor": "stack", "incarnation": 0, "scenario": {}}
    assert rec.records == [list(r) for r in RECORDS] + [[R.END, "exit 0"]]
    assert rec.truncated is None and rec.ended == "exit 0" and rec.inputs == 8
    assert rec.frames == 1 + 4 + 1  # head, four frames of two, the END frame


@pytest.mark.parametrize("keep", [0, 3, 8, 9, 40])
def test_a_torn_tail_is_skipped_and_reported(tmp_path: Path, keep: int) -> None:
    """A SIGKILL mid-write: every whole frame reads, the torn one is described."""
    path = tmp_path / "stack.0.msgpack"
    write_record(path, RECORDS, end=None)
    data = path.read_bytes()
    last = [off for off, _ in R.iter_frames(data)][-1]  # the frame of the last two records
    path.write_bytes(data[:last + keep])  # `keep` bytes of it survive
    rec = R.read_record(path)
    assert rec.ended is None
    assert rec.records == [list(r) for r in RECORDS[:6]]
    if keep == 0:
        assert rec.truncated is None  # cut between two frames: nothing torn
    elif keep < R.FRAME_HEADER.size:
        assert rec.truncated == f"{keep} bytes of a frame header at byte {last} " \
                                f"({keep} bytes dropped)"
    else:
        assert rec.truncated is not None and \
            f"with {keep - R.FRAME_HEADER.size} present at byte {last}" in rec.truncated


def test_a_frame_with_a_bad_crc_ends_the_readable_prefix(tmp_path: Path) -> None:
    path = tmp_path / "stack.0.msgpack"
    write_record(path, RECORDS)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the END frame
    path.write_bytes(bytes(data))
    rec = R.read_record(path)
    assert rec.ended is None and len(rec.records) == len(RECORDS)
    assert rec.truncated is not None and "CRC" in rec.truncated


def test_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "x.msgpack"
    path.write_bytes(b"hello")
    with pytest.raises(R.RecordError, match="not a stack input record"):
        R.read_record(path)


def test_frames_are_written_when_due_only(tmp_path: Path) -> None:
    path = tmp_path / "stack.0.msgpack"
    w = R.RecordWriter(path, {"actor": "stack", "incarnation": 0, "scenario": {}})
    size = path.stat().st_size
    w.pack((R.TIMERS, 5))
    w.maybe_flush(R.FRAME_NS - 1)
    assert path.stat().st_size == size  # neither big nor old enough
    w.maybe_flush(R.FRAME_NS)
    assert path.stat().st_size > size
    w.pack((R.SEG, 6, b"x" * R.FRAME_BYTES))
    w.maybe_flush(R.FRAME_NS + 1)  # big enough at once
    assert len(R.read_record(path).records) == 2
    w.close("exit 0")


def test_replay_cli_without_a_record_exits_2(tmp_path: Path) -> None:
    code, out = replay_cli(tmp_path)
    assert code == 2 and "holds no record" in out


# --- real runs --------------------------------------------------------------------------


def small_scenario(kb: int, seed: int = 1) -> Scenario:
    """The default topology (impaired wire: loss, duplicates, reordering, corruption, and
    the early hold/drop events), with small flows."""
    raw = load_scenario(None).to_dict()
    for f in raw["flows"]:
        f["bytes"] = kb * 1000
    raw["duration"] = 40.0
    raw["seed"] = seed
    return Scenario.from_dict(raw)


@pytest.fixture(scope="module")
def clean_run(module_run_dir: Path) -> Iterator[Path]:
    rd = module_run_dir / "run"
    summary = run_scenario(small_scenario(400), rd, progress=False)
    assert summary["reason"] == "complete" and summary["checker"]["ok"], summary
    yield rd


def counters(rd: Path) -> dict[str, Any]:
    return dict(json.loads((rd / "counters.json").read_text())["stack"]["role"])


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_run_replays_identically(clean_run: Path) -> None:
    mib, drops = counters(clean_run)["mib"], counters(clean_run)["drops"]
    # The impairments did their work: out-of-order queueing and drops to reproduce.
    assert mib.get("TcpExtTCPOFOQueue", 0) > 0 and sum(drops.values()) > 0
    code, out = replay_cli(clean_run)
    assert code == 0, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("replay: identical: ")
    assert "reader bytes f1 400000 f2 400000 equal" in last
    n = int(last.split("identical: ")[1].split(" inputs")[0])
    rec = R.read_record(clean_run / R.RECORD_DIR / "stack.0.msgpack")
    assert n == rec.inputs > 0 and rec.ended == "exit 0" and rec.truncated is None
    # Every tcp_v4_rcv of the run is in the record, and so is counters.json: a GRO skb's
    # record says how many wire frames it stands for.
    segs = [r for r in rec.records if r[0] == R.SEG]
    assert any(len(r) > 5 and r[5] > 1 for r in segs)  # the default NIC has GRO on
    assert sum(r[5] if len(r) > 5 else 1 for r in segs) == counters(clean_run)["segments"]
    assert "counters.json = snapshot" in out


def rewrite(src: Path, dst: Path, change: Any) -> None:
    """Copy run ``src`` to ``dst`` with its stack record's records passed through
    ``change(records)`` (the frames written anew, so only the content differs)."""
    dst.mkdir()
    for name in (R.RECORD_DIR, "deliveries"):
        shutil.copytree(src / name, dst / name)
    shutil.copy(src / "counters.json", dst / "counters.json")
    path = dst / R.RECORD_DIR / "stack.0.msgpack"
    rec = R.read_record(path)
    records = rec.records[:-1]  # without END: close() writes it
    change(records)
    w = R.RecordWriter(path, rec.head)
    for r in records:
        w.pack(r)
    w.close(str(rec.ended))


def flip_window(frame: bytes) -> bytes:
    b = bytearray(frame)
    b[20 + 14] ^= 0x01  # the TCP header's window field (20-byte IP header before it)
    return bytes(b)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_tampered_output_is_the_first_divergence(clean_run: Path, tmp_path: Path) -> None:
    rec = R.read_record(clean_run / R.RECORD_DIR / "stack.0.msgpack")
    outs = [i for i, r in enumerate(rec.records) if r[0] == R.OUT and r[1]]
    target = outs[len(outs) // 2]

    def change(records: list[list[Any]]) -> None:
        records[target][1][-1] = flip_window(records[target][1][-1])

    rewrite(clean_run, tmp_path / "t", change)
    code, out = replay_cli(tmp_path / "t")
    assert code == 1, out
    assert f"first divergence at record #{target} " in out, out
    n = len(rec.records[target][1])
    assert f"frame {n - 1} of {n} sent to the nic" in out


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_tampered_counter_is_named_at_its_snapshot(clean_run: Path, tmp_path: Path) -> None:
    rec = R.read_record(clean_run / R.RECORD_DIR / "stack.0.msgpack")
    snaps = [i for i, r in enumerate(rec.records) if r[0] == R.SNAP]
    target = snaps[-2]

    def change(records: list[list[Any]]) -> None:
        records[target][2]["mib"]["TcpInSegs"] += 1

    rewrite(clean_run, tmp_path / "t", change)
    code, out = replay_cli(tmp_path / "t")
    assert code == 1
    want = rec.records[target][2]["mib"]["TcpInSegs"]
    assert f"first divergence at record #{target} " in out
    assert "counter mib.TcpInSegs" in out and f"expected {want + 1}, got {want}" in out


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_tampered_input_diverges_at_its_first_effect(clean_run: Path,
                                                       tmp_path: Path) -> None:
    """A reader's copy asked for 1 byte instead of what it asked: the reply right after
    it is where the replay first differs (one byte copied, not the chunk recorded)."""
    rec = R.read_record(clean_run / R.RECORD_DIR / "stack.0.msgpack")
    copies = [i for i, r in enumerate(rec.records[:-1])
              if r[0] == R.OP and r[3] == "SkbCopyDatagramMsg"
              and rec.records[i + 1][0] == R.REPLY and rec.records[i + 1][1]["copied"] > 1]
    target = copies[len(copies) // 2]
    copied = rec.records[target + 1][1]["copied"]

    def change(records: list[list[Any]]) -> None:
        records[target][5]["len"] = 1

    rewrite(clean_run, tmp_path / "t", change)
    code, out = replay_cli(tmp_path / "t", "--json")
    assert code == 1
    div = json.loads(out)["incarnations"][0]["divergence"]
    assert div["index"] == target + 1 and div["what"] == f"reply to input #{target}"
    assert div["after"].startswith(f"input #{target} sock_op SkbCopyDatagramMsg")
    assert f"'copied': {copied}" in div["expected"] and "'copied': 1," in div["got"]


def test_a_recorded_result_keeps_copied_bytes_as_length_and_crc32() -> None:
    enc = {"result": "Copied", "data": b"abc" * 100, "copied": 300, "fin": False,
           "seq": 1, "offset": 0}
    rec = R.recorded_result(enc)
    assert "data" not in rec and rec["data_crc32"] == [300, zlib.crc32(b"abc" * 100)]
    assert {k: v for k, v in rec.items() if k != "data_crc32"} == \
        {k: v for k, v in enc.items() if k != "data"}
    assert R.recorded_result(rec) == rec  # idempotent
    no_bytes = {"result": "Woken", "relock": True}
    assert R.recorded_result(no_bytes) is no_bytes


def _copy_replies(records: list[list[Any]]) -> list[int]:
    return [i for i, r in enumerate(records) if r[0] == R.REPLY and "data_crc32" in r[1]]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_reply_whose_bytes_differ_diverges_there(clean_run: Path, tmp_path: Path) -> None:
    """The record holds a copy's bytes as their CRC: a wrong byte still diverges."""
    rec = R.read_record(clean_run / R.RECORD_DIR / "stack.0.msgpack")
    target = _copy_replies(rec.records)[3]

    def change(records: list[list[Any]]) -> None:
        n, crc = records[target][1]["data_crc32"]
        records[target][1]["data_crc32"] = [n, crc ^ 1]

    rewrite(clean_run, tmp_path / "t", change)
    code, out = replay_cli(tmp_path / "t", "--json")
    assert code == 1
    assert json.loads(out)["incarnations"][0]["divergence"]["index"] == target


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_record_with_whole_reply_bytes_still_replays(clean_run: Path,
                                                       tmp_path: Path) -> None:
    """Records written before the CRC form hold the copied bytes whole."""
    rec = R.read_record(clean_run / R.RECORD_DIR / "stack.0.msgpack")
    whole = {c.index: c.data for c in R.replay(rec).chunks}
    targets = _copy_replies(rec.records)
    assert targets and all(i in whole for i in targets)

    def change(records: list[list[Any]]) -> None:
        for i in targets:
            records[i][1].pop("data_crc32")
            records[i][1]["data"] = whole[i]

    rewrite(clean_run, tmp_path / "t", change)
    code, out = replay_cli(tmp_path / "t", "--json")
    assert code == 0, out
    rec2 = R.read_record(tmp_path / "t" / R.RECORD_DIR / "stack.0.msgpack")
    assert isinstance(rec2.records[targets[0]][1]["data"], bytes)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_each_incarnation_is_replayed_on_a_fresh_model(clean_run: Path,
                                                       tmp_path: Path) -> None:
    """A restarted stack is a new process with a new model: its record is replayed from
    scratch (one model carried over would find the listener taken, and diverge)."""
    rewrite(clean_run, tmp_path / "t", lambda records: None)
    src = tmp_path / "t" / R.RECORD_DIR / "stack.0.msgpack"
    rec = R.read_record(src)
    w = R.RecordWriter(src.with_name("stack.1.msgpack"), {**rec.head, "incarnation": 1})
    for r in rec.records[:-1]:
        w.pack(r)
    w.close("exit 0")
    code, out = replay_cli(tmp_path / "t")
    assert code == 0, out
    assert "stack#0: " in out and "stack#1: " in out
    assert out.strip().splitlines()[-1].startswith(
        f"replay: identical over 2 incarnations: {2 * rec.inputs} inputs")
    code, out = replay_cli(tmp_path / "t", "--incarnation", "1")
    assert code == 0 and "stack#0" not in out and f"identical: {rec.inputs} inputs" in out


# --- chaos -------------------------------------------------------------------------------


def chaos_run(rd: Path, action: ChaosAction, kb: int = 1500) -> dict[str, Any]:
    chaos = ChaosRunner([action])
    pids: list[int] = []

    def hook(launcher: Any, supervisor: Any, t: float) -> None:
        pids.extend(p for p in launcher.pids().values() if p not in pids)
        chaos(launcher, supervisor, t)

    summary = run_scenario(small_scenario(kb), rd, progress=False, chaos=hook,
                           policy=RestartPolicy(hang_after_s=2.0))
    assert chaos.done and chaos.done[0]["result"] == "SIGKILL", chaos.done
    assert alive(pids) == [], "actor processes outlived the run"
    return summary


@pytest.fixture
def chaos_dir() -> Iterator[Path]:
    yield from _short_run_dir("rxrc")


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(150)
def test_a_killed_stack_replays_the_prefix_it_wrote(chaos_dir: Path) -> None:
    rd = chaos_dir / "run"
    s = chaos_run(rd, ChaosAction(0.4, "kill", "stack"))
    assert any(d["actor"] == "stack" for d in s["supervision"]["deaths"])
    first = R.read_record(rd / R.RECORD_DIR / "stack.0.msgpack")
    assert first.ended is None and first.inputs > 0  # SIGKILL: no END, a prefix
    assert any(r[0] == R.SEG for r in first.records)
    code, out = replay_cli(rd)
    assert code == 0, out
    assert "stack#0: " in out and "no end: the process was killed" in out
    # Whether the supervisor restarted it before the readers' resets ended the run is
    # up to timing; a second incarnation, if any, has its own record, replayed too.
    assert out.strip().splitlines()[-1].startswith("replay: identical")
    assert "counters.json = snapshot" in out  # its last heartbeat


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(150)
def test_a_killed_reader_replays(chaos_dir: Path) -> None:
    rd = chaos_dir / "run"
    s = chaos_run(rd, ChaosAction(0.4, "kill", "r1"))
    assert s["reason"] == "complete" and s["checker"]["ok"], s["checker_text"]
    rec = R.read_record(rd / R.RECORD_DIR / "stack.0.msgpack")
    # task_exit for r1 (the shell calls it on the exit and on the restart event).
    assert {r[2] for r in rec.records if r[0] == R.EXIT} == {"r1"}
    code, out = replay_cli(rd)
    assert code == 0, out
    assert "replay: identical: " in out and "f2 1500000" in out
    # What r1 took and died with, the checker's delivered-then-lost, shows as such.
    f1 = next(f for f in s["checker"]["flows"] if f["flow"] == "f1")
    if f1["delivered_then_lost"]:
        assert (f"f1 {f1['delivered']} (+{f1['delivered_then_lost']} taken by a reader that "
                "died before recording them)") in out
