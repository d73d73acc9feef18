"""Chaos: the checker's proofs, and real runs with actors killed, stopped and resumed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from actors.peer.payload import payload_bytes
from actors.reader.actor import delivery_digest
from actors.runtime.supervisor import RestartPolicy
from actors.scenario import ChaosConfig, ChaosEventConfig, Scenario
from cli.chaos import ChaosAction, ChaosRunner, plan_chaos
from cli.checker import check_flow, check_run
from cli.config import load_scenario
from cli.run import run_scenario
from tests.chaos_helpers import alive, assert_reader_death_accounted, died

FLOW_ID, SIZE = 1, 10_000


def rec(off: int, n: int, *, reader: str = "r1", inc: int = 0, line: int = 0,
        digest: str | None = None) -> Any:
    from cli.checker import Delivery
    d = digest or delivery_digest(payload_bytes(FLOW_ID, off, n))
    return Delivery(reader, inc, "f1", off, n, d, line)


# --- the checker on records (no processes) --------------------------------------------


def test_checker_passes_a_clean_stream() -> None:
    v = check_flow("f1", FLOW_ID, SIZE, [rec(0, 4000, line=1), rec(4000, 6000, line=2)])
    assert v.ok and v.delivered == SIZE and not v.problems


def test_checker_catches_an_altered_chunk_with_witness() -> None:
    v = check_flow("f1", FLOW_ID, SIZE,
                   [rec(0, 4000, line=1), rec(4000, 6000, line=2, digest="00" * 8)])
    assert not v.ok
    assert any(p.startswith("altered: r1#0 line 2: [4000, 10000)") for p in v.problems)


def test_checker_catches_duplicated_bytes() -> None:
    v = check_flow("f1", FLOW_ID, SIZE, [rec(0, 5000, line=1), rec(4000, 6000, line=2)])
    assert not v.ok
    assert any(p.startswith("duplicated: [4000, 5000)") for p in v.problems)


def test_checker_catches_reordering_within_one_reader() -> None:
    v = check_flow("f1", FLOW_ID, SIZE, [rec(4000, 6000, line=1), rec(0, 4000, line=2)])
    assert not v.ok
    assert any(p.startswith("reordered: r1#0 line 2") for p in v.problems)


def test_checker_gap_needs_a_reader_death_or_a_reset() -> None:
    recs = [rec(0, 3000, line=1), rec(5000, 5000, inc=1, line=1)]
    assert not check_flow("f1", FLOW_ID, SIZE, recs).ok
    v = check_flow("f1", FLOW_ID, SIZE, recs, reader_deaths=1)
    assert v.ok and v.delivered_then_lost == 2000
    short = [rec(0, 3000, line=1)]
    assert not check_flow("f1", FLOW_ID, SIZE, short).ok
    assert check_flow("f1", FLOW_ID, SIZE, short, reset=True).ok


def test_checker_reads_the_run_dir_and_flags_a_corrupted_line(tmp_path: Path) -> None:
    dl = tmp_path / "deliveries"
    dl.mkdir()
    good = payload_bytes(FLOW_ID, 0, SIZE)
    bad = bytearray(good[4000:])
    bad[10] ^= 0xFF
    lines = [{"flow": "f1", "off": 0, "len": 4000, "digest": delivery_digest(good[:4000])},
             {"flow": "f1", "off": 4000, "len": 6000, "digest": delivery_digest(bytes(bad))}]
    (dl / "r1.0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    v = check_run(tmp_path, [("f1", FLOW_ID, SIZE)])
    assert not v.ok
    assert v.flows[0].problems == [
        f"altered: r1#0 line 2: [4000, 10000) digest {delivery_digest(bytes(bad))}; "
        f"the peer sent digest {delivery_digest(good[4000:])} there"]


def test_plan_is_seeded_and_covers_every_period() -> None:
    sc = Scenario.from_dict({})
    names = ["peer", "nic", "cpu0", "cpu1", "stack", "r1"]
    roles = {"peer": "peer", "nic": "nic", "cpu0": "cpu", "cpu1": "cpu", "stack": "stack",
             "r1": "reader"}
    cfg = ChaosConfig(kill=("cpu", "reader"), every_ms=500, seed=4, schedule=(
        ChaosEventConfig(at_ms=100, action="stop", target="nic"),))
    a = plan_chaos(sc, names, roles, cfg, horizon_s=2.0)
    assert a == plan_chaos(sc, names, roles, cfg, horizon_s=2.0)
    kills = [x for x in a if x.action == "kill"]
    assert len(kills) == 4 and all(x.target in ("cpu0", "cpu1", "r1") for x in kills)
    assert [int(x.at_s // 0.5) for x in kills] == [0, 1, 2, 3]
    assert ChaosAction(0.1, "stop", "nic") in a and ChaosAction(1.1, "cont", "nic") in a


# --- real runs ---------------------------------------------------------------------------


def small_scenario(mb: float = 2.0, seed: int = 1) -> Scenario:
    sc = load_scenario(None)
    raw = sc.to_dict()
    for f in raw["flows"]:
        f["bytes"] = int(mb * 1_000_000)
    raw["duration"] = 30.0
    raw["seed"] = seed
    return Scenario.from_dict(raw)


def chaos_run(tmp_path: Path, plan: list[ChaosAction], *, mb: float = 2.0,
              seed: int = 1) -> dict[str, Any]:
    runner = ChaosRunner(list(plan))
    pids: list[int] = []

    def hook(launcher: Any, supervisor: Any, t: float) -> None:
        pids.extend(p for p in launcher.pids().values() if p not in pids)
        runner(launcher, supervisor, t)

    summary = run_scenario(small_scenario(mb, seed), tmp_path / "run", progress=False,
                           chaos=hook, policy=RestartPolicy(hang_after_s=1.0))
    summary["chaos_done"] = runner.done
    assert alive(pids) == [], "actor processes outlived the run"
    return summary




@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("target", "at_s"), [
    ("cpu0", 0.15), ("cpu1", 0.4), ("nic", 0.2), ("nic", 0.45), ("r1", 0.25), ("r2", 0.4)])
def test_kill_matrix_flows_complete_intact(tmp_path: Path, target: str, at_s: float) -> None:
    s = chaos_run(tmp_path, [ChaosAction(at_s, "kill", target)], mb=4.0)
    assert s["chaos_done"][0]["result"] == "SIGKILL"
    assert died(s, target) and s["supervision"]["restarts"] >= 1
    assert s["reason"] == "complete", s["checker_text"]
    assert s["checker"]["conservation"]["checked"], s["checker_text"]
    assert s["checker"]["ok"], s["checker_text"]
    if target.startswith("r"):
        assert any(f["delivered"] + f["delivered_then_lost"] == f["expected"]
                   for f in s["checker"]["flows"])
    else:
        assert all(f["delivered"] == f["expected"] for f in s["checker"]["flows"])


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_reader_killed_while_owning_the_lock(tmp_path: Path) -> None:
    """r1 holds the socket lock 50 ms of every read: killed owning it, its lock goes
    with it. Not left to timing: once data flows, r1 is SIGSTOPped (a stopped process
    cannot release the lock), the stack is asked who owns r1's socket, and r1 is
    SIGKILLed only if it is r1; otherwise it is continued and asked again later."""
    sc = small_scenario(2.0)
    raw = sc.to_dict()
    raw["impairments"] = {}   # a clean wire: no retransmission delays the first reads
    raw["readers"][0]["hold_lock_us"] = 50_000
    raw["readers"][0]["read_size"] = 16384
    pids: list[int] = []
    runner = ChaosRunner([])
    tries: list[bool] = []

    def hook(launcher: Any, supervisor: Any, t: float) -> None:
        pids.extend(p for p in launcher.pids().values() if p not in pids)
        stack = (launcher.last_counters.get("stack") or {}).get("role") or {}
        if runner.done or int(stack.get("segments", 0)) < 100 or len(tries) >= 50:
            return
        supervisor.stop_actor("r1")
        now = launcher.request_stats(["stack"], timeout_s=5).get("stack") or {}
        owners = [sk.get("owner") for sk in (now.get("role") or {}).get("sockets", [])]
        tries.append("r1" in owners)
        if tries[-1]:
            runner.done.append(runner.perform(launcher, supervisor,
                                              ChaosAction(t, "kill", "r1"), t))
        else:
            supervisor.cont_actor("r1")

    s = run_scenario(Scenario.from_dict(raw), tmp_path / "run", progress=False, chaos=hook)
    assert alive(pids) == []
    assert runner.done and runner.done[0]["result"] == "SIGKILL", f"never owned: {tries}"
    stack = json.loads((tmp_path / "run" / "counters.json").read_text())["stack"]["role"]
    assert stack["locks_released_by_exit"] == 1, "r1 did not die owning the lock"
    assert_reader_death_accounted(s, "r1", "f1")


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_stack_killed_peer_and_readers_see_reset(tmp_path: Path) -> None:
    s = chaos_run(tmp_path, [ChaosAction(0.5, "kill", "stack")])
    assert died(s, "stack")
    assert s["reason"] == "complete"
    errors = [e for e in s["errors"] if e["event"] == "reader_error"]
    assert {e["actor"] for e in errors} == {"r1", "r2"}
    assert all(e["error"] == -104 for e in errors)  # ECONNRESET
    assert all(f["reset"] for f in s["checker"]["flows"])
    assert s["checker"]["ok"], s["checker_text"]


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(90)
def test_sigstop_is_noticed_and_sigcont_resumes(tmp_path: Path) -> None:
    s = chaos_run(tmp_path, [ChaosAction(0.3, "stop", "cpu0"),
                             ChaosAction(2.0, "cont", "cpu0")])
    events = [(e["event"], e["actor"]) for e in s["supervision"]["events"]]
    assert ("actor_hung", "cpu0") in events
    assert ("actor_resumed", "cpu0") in events
    assert s["supervision"]["restarts"] == 0
    assert s["reason"] == "complete" and s["checker"]["ok"], s["checker_text"]


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("action", "link"), [("cut_link", "nic->cpu0"),
                                              ("delay_link", "stack->nic")])
def test_a_cut_or_delayed_link_holds_messages_and_heals(tmp_path: Path, action: str,
                                                         link: str) -> None:
    s = chaos_run(tmp_path, [ChaosAction(0.2, action, link, delay_ms=50),
                             ChaosAction(1.2, "heal_link", link)])
    results = [d["result"] for d in s["chaos_done"]]
    assert results[0] in ("cut", "delay 50 ms") and results[1] == "heal"
    src = link.split("->")[0]
    counters = json.loads((tmp_path / "run" / "counters.json").read_text())
    faults = counters[src]["runtime"]["link_faults"]
    assert faults["held"] > 0 and faults["released"] == faults["held"]
    assert s["reason"] == "complete" and s["checker"]["ok"], s["checker_text"]


def test_no_orphans_left_by_this_module() -> None:
    me = os.getpid()
    children = [p for p in os.listdir("/proc") if p.isdigit()
                and f"PPid:\t{me}\n" in _status(p)]
    assert alive([int(p) for p in children]) == []


def _status(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
