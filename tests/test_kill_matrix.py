"""The kill matrix: every role killed mid-transfer, a hung actor restarted by its
policy, and the launcher's own death; with counters that survive each killed process."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.runtime import procutil
from actors.runtime.launcher import PROJECT_ROOT
from actors.runtime.supervisor import RestartPolicy, Supervisor
from actors.scenario import Scenario
from cli.chaos import ChaosAction, ChaosRunner
from cli.checker import conservation_across_restarts, senders_that_died
from cli.config import load_scenario
from cli.run import run_scenario
from tests.chaos_helpers import alive, assert_reader_death_accounted, died

# --- conservation across restarts, on counters (no processes) --------------------------


def nic_r(rx: int, missed: int = 0) -> dict[str, Any]:
    return {"ethtool": {"rx_packets": rx, "rx_missed_errors": missed}}


def cpu_r(frames_in: int, to_stack: int, ring: int = 0, ip: int = 0) -> dict[str, Any]:
    return {"frames_in": frames_in, "frames_to_stack": to_stack, "ring_frames": ring,
            "ip_drops": {"IPINHDRERRORS": ip} if ip else {}, "dma_overruns": 0}


def stack_r(segments: int, waiting: int = 0) -> dict[str, Any]:
    return {"segments": segments, "frames_waiting": waiting}


def actor(role: dict[str, Any], inc: int = 0,
          dead: list[tuple[int, dict[str, Any]]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "runtime": {"incarnation": inc}}
    if dead:
        out["incarnations"] = [{"incarnation": i, "exit": "killed by SIGKILL",
                                "reported": True, "role": r, "runtime": {}}
                               for i, r in dead]
    return out


def test_a_killed_cpu_balances_with_what_it_lost_named() -> None:
    # cpu0#0 reported 40 in (5 in its ring, 3 ip drops, 32 up) before it died; the nic
    # DMA'd 100 to cpu0 and cpu1 in all, the stack took 80 + 2 waiting.
    counters = {
        "peer": actor({"peer": {"frames_out": 100}}),
        "nic": actor(nic_r(100)),
        "cpu0": actor(cpu_r(30, 28, ring=2), inc=1, dead=[(0, cpu_r(40, 32, ring=5, ip=3))]),
        "cpu1": actor(cpu_r(20, 20)),
        "stack": actor(stack_r(80, waiting=2)),
    }
    c = conservation_across_restarts(counters, ["cpu0", "cpu1"])
    assert c["checked"] and c["ok"], c
    assert c["killed"] == {"cpu": ["cpu0#0"]}
    # in 100 = dropped 3 + held 2 (living rings) + 82 to the stack + lost 13
    assert c["lost_since_last_report"] == {"cpu": 13}
    d = c["detail"]["cpu"]
    assert (d["held_at_last_report"], d["entered_after_last_report"],
            d["left_after_last_report"]) == (5, 10, 2)
    assert 5 + 10 - 2 == 13
    assert any("cpu0#0 killed: 13 frames lost" in n for n in c["notes"])
    assert list(c["equations"].values()) == [[100, 100]]


def test_a_killed_process_cannot_have_reported_more_than_reached_it() -> None:
    counters = {
        "nic": actor(nic_r(50)),
        "cpu0": actor(cpu_r(10, 10), inc=1, dead=[(0, cpu_r(45, 45))]),
        "stack": actor(stack_r(55)),
    }
    c = conservation_across_restarts(counters, ["cpu0"])
    assert not c["ok"]
    assert any("-5 frames entered after its last report" in w for w in c["witnesses"])


def test_frames_a_killed_process_counted_as_sent_but_never_sent_are_lost_with_it() -> None:
    # cpu0#0's last heartbeat counted 30 frames handed to the stack, but SIGKILL took the
    # last 2 still in its send queue: the stack got 28 from it and 10 from cpu0#1.
    counters = {
        "peer": actor({"peer": {"frames_out": 40}}),
        "nic": actor(nic_r(40)),
        "cpu0": actor(cpu_r(10, 10), inc=1, dead=[(0, cpu_r(30, 30))]),
        "stack": actor(stack_r(38)),
    }
    c = conservation_across_restarts(counters, ["cpu0"])
    assert c["ok"], c
    assert c["lost_since_last_report"] == {"cpu": 2}
    d = c["detail"]["cpu"]
    assert (d["left_after_last_report"], d["lost_in_send_queue"]) == (-2, 2)
    assert any("2 it had counted as sent never reached the stack" in n for n in c["notes"])


def test_an_unbalanced_last_report_is_a_witness() -> None:
    counters = {
        "nic": actor(nic_r(50)),
        "cpu0": actor(cpu_r(10, 10), inc=1, dead=[(0, cpu_r(40, 30))]),  # 10 vanished
        "stack": actor(stack_r(50)),
    }
    c = conservation_across_restarts(counters, ["cpu0"])
    assert not c["ok"]
    assert c["witnesses"][0].startswith("unbalanced report cpu0#0: in 40")


def test_neighbours_that_both_lost_a_process_are_one_box() -> None:
    counters = {
        "peer": actor({"peer": {"frames_out": 120}}),
        "nic": actor(nic_r(60, missed=4), inc=1, dead=[(0, nic_r(40))]),
        "cpu0": actor(cpu_r(50, 50), inc=1, dead=[(0, cpu_r(30, 28, ring=2))]),
        "stack": actor(stack_r(78)),
    }
    c = conservation_across_restarts(counters, ["cpu0"])
    assert c["ok"], c
    # wire 120 = 4 missed + 78 up + lost 38 (nic and cpu between them)
    assert c["lost_since_last_report"] == {"nic+cpu": 38}


def test_a_killed_nic_without_a_count_of_the_wire_is_not_bounded() -> None:
    counters = {
        "peer": actor({"peer": {"frames_out": 90}}, dead=[(0, {"peer": {"frames_out": 90}})]),
        "nic": actor(nic_r(40), inc=1, dead=[(0, nic_r(40))]),
        "cpu0": actor(cpu_r(80, 80)),
        "stack": actor(stack_r(80)),
    }
    c = conservation_across_restarts(counters, ["cpu0"])
    assert c["lost_since_last_report"] == {"nic": None}
    assert any("not bounded (the wire's sender died too)" in n for n in c["notes"])
    assert senders_that_died(counters) == ["peer#0"]


# --- the supervisor's watchdog (a fake launcher, a fake clock) ---------------------------


@dataclass
class FakeProc:
    name: str
    role: str
    pid: int = 1000
    incarnation: int = 0
    running: bool = True
    ready: bool = True
    external: bool = False
    returncode: int | None = None


@dataclass
class FakeLauncher:
    procs: dict[str, FakeProc]
    signals: list[tuple[str, int]] = field(default_factory=list)
    log: Any = None

    @property
    def names(self) -> list[str]:
        return list(self.procs)

    def process(self, name: str) -> FakeProc:
        return self.procs[name]

    def exited(self) -> dict[str, int]:
        return {}

    def kill(self, name: str, sig: int, timeout_s: float | None = 5.0) -> None:
        self.signals.append((name, sig))


@pytest.mark.parametrize(("policy", "killed"), [("on-failure", True), ("never", False)])
def test_a_hung_actor_is_killed_only_when_its_policy_restarts(policy: str,
                                                              killed: bool) -> None:
    now = [0.0]
    launcher = FakeLauncher({"cpu0": FakeProc("cpu0", "cpu")})
    policy_ = RestartPolicy(policies={"cpu": policy}, hang_after_s=1.0,
                            restart_hung_after_s=2.0)
    sup = Supervisor(launcher, policy_, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 1.5
    sup.tick()
    assert [e["event"] for e in sup.events] == ["actor_hung"] and not launcher.signals
    now[0] = 2.5
    sup.tick()
    sup.tick()
    assert launcher.signals == ([("cpu0", signal.SIGKILL)] if killed else [])
    assert sup.summary()["hung_killed"] == (1 if killed else 0)


def test_the_watchdog_cannot_be_shorter_than_the_hang_watch() -> None:
    with pytest.raises(ValueError, match="shorter than hang_after_s"):
        RestartPolicy(hang_after_s=2.0, restart_hung_after_s=1.0)


# --- real runs: every role killed mid-transfer ------------------------------------------

MB = 3.0


def scenario(*, duration: float = 40.0, clean_wire: bool = False) -> Scenario:
    raw = load_scenario(None).to_dict()
    for f in raw["flows"]:
        f["bytes"] = int(MB * 1_000_000)
    raw["duration"] = duration
    if clean_wire:
        raw["impairments"] = {}
    return Scenario.from_dict(raw)


@dataclass
class WhenFlowing:
    """Chaos on an observed event, not a moment: once the stack has reported
    ``min_segments`` and the target has reported at least once, do ``action``."""

    target: str
    action: str = "kill"
    min_segments: int = 300
    runner: ChaosRunner = field(default_factory=lambda: ChaosRunner([]))
    pids: list[int] = field(default_factory=list)

    def __call__(self, launcher: Any, supervisor: Any, t: float) -> None:
        self.pids.extend(p for p in launcher.pids().values() if p not in self.pids)
        if self.runner.done:
            return
        stack = (launcher.last_counters.get("stack") or {}).get("role") or {}
        proc = launcher.process(self.target)
        if (int(stack.get("segments", 0)) >= self.min_segments
                and proc.incarnation in launcher.reports.get(self.target, {})):
            self.runner.done.append(self.runner.perform(
                launcher, supervisor, ChaosAction(t, self.action, self.target), t))


def run(tmp_path: Path, hook: WhenFlowing, sc: Scenario,
        policy: RestartPolicy | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    rd = tmp_path / "run"
    s = run_scenario(sc, rd, progress=False, chaos=hook,
                     policy=policy or RestartPolicy(hang_after_s=1.5))
    assert hook.runner.done, "the trigger never fired"
    assert alive(hook.pids) == [], "actor processes outlived the run"
    return s, json.loads((rd / "counters.json").read_text())


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("target", "role"), [("nic", "nic"), ("cpu0", "cpu"),
                                              ("stack", "stack")])
def test_a_killed_path_process_keeps_its_counters_and_conservation_balances(
        tmp_path: Path, target: str, role: str) -> None:
    hook = WhenFlowing(target)
    s, counters = run(tmp_path, hook, scenario())
    assert hook.runner.done[0]["result"] == "SIGKILL"
    assert died(s, target)
    assert s["reason"] == "complete", s["checker_text"]
    # The dead incarnation's last heartbeat is kept, beside the living one's counters.
    dead = counters[target]["incarnations"]
    assert dead[0]["incarnation"] == 0 and dead[0]["reported"]
    assert dead[0]["exit"] == "killed by SIGKILL"
    if role != "stack":  # (the readers' resets may end the run before its restart)
        assert s["supervision"]["restarts"] >= 1
        assert counters[target]["runtime"]["incarnation"] >= 1
    c = s["checker"]["conservation"]
    assert c["checked"] and c["across_restarts"], s["checker_text"]
    assert c["ok"], s["checker_text"]
    assert target + "#0" in c["killed"][role]
    lost = c["lost_since_last_report"][role]
    assert isinstance(lost, int) and lost >= 0
    assert f"{target}#0 killed: {lost} frames lost" in s["checker_text"]
    assert s["checker"]["ok"], s["checker_text"]
    flows = s["checker"]["flows"]
    if role == "stack":   # its sockets died: the peer got RST, the readers ECONNRESET
        assert all(f["reset"] for f in flows)
    else:                 # TCP retransmitted what died in the ring
        assert all(f["delivered"] == f["expected"] for f in flows)


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_killed_reader_loses_only_what_it_held_and_conservation_is_exact(
        tmp_path: Path) -> None:
    hook = WhenFlowing("r1")
    s, _ = run(tmp_path, hook, scenario())
    c = s["checker"]["conservation"]
    assert c["checked"] and c["ok"] and not c.get("across_restarts"), s["checker_text"]
    assert_reader_death_accounted(s, "r1", "f1")


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_killed_peer_cuts_its_flows_short_and_the_receiver_waits(tmp_path: Path) -> None:
    hook = WhenFlowing("peer")
    s, counters = run(tmp_path, hook, scenario(duration=5.0))
    assert died(s, "peer") and s["supervision"]["restarts"] == 0
    assert ("not_restarted", "peer") in [(e["event"], e["actor"])
                                         for e in s["supervision"]["events"]]
    # Linux keeps the connections open (no keepalive): the run lasts until its end.
    assert s["reason"] == "duration"
    assert counters["peer"]["incarnations"][0]["exit"] == "killed by SIGKILL"
    flows = s["checker"]["flows"]
    short = [f for f in flows if f["delivered"] < f["expected"]]
    assert short, "the peer was killed after sending everything"
    assert all(f["cut_short_by"] == "peer#0" and f["ok"] for f in short)
    for f in short:
        assert (f"{f['flow']} cut short by the sender's death (peer#0 killed): "
                f"{f['expected'] - f['delivered']} of its") in s["checker_text"]
    c = s["checker"]["conservation"]
    assert c["checked"] and c["ok"], s["checker_text"]
    assert s["checker"]["ok"], s["checker_text"]


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_sigstopped_actor_is_restarted_after_the_heartbeat_timeout(tmp_path: Path) -> None:
    hook = WhenFlowing("cpu0", action="stop")
    policy = RestartPolicy(hang_after_s=1.0, restart_hung_after_s=2.5)
    s, counters = run(tmp_path, hook, scenario(), policy)
    assert hook.runner.done[0]["result"] == "SIGSTOP"
    events = [(e["event"], e["actor"]) for e in s["supervision"]["events"]]
    for want in ("actor_hung", "actor_hung_killed", "actor_died", "actor_restarted"):
        assert (want, "cpu0") in events, events
    assert events.index(("actor_hung", "cpu0")) < events.index(("actor_hung_killed", "cpu0"))
    killed = next(e for e in s["supervision"]["events"] if e["event"] == "actor_hung_killed")
    assert killed["silent_s"] >= 2.5
    assert [d for d in s["supervision"]["deaths"] if d.get("hung")] == [
        {"actor": "cpu0", "role": "cpu", "incarnation": 0, "code": -signal.SIGKILL,
         "hung": True}]
    assert counters["cpu0"]["runtime"]["incarnation"] == 1
    assert s["reason"] == "complete", s["checker_text"]
    c = s["checker"]["conservation"]
    assert c["checked"] and c["ok"] and "cpu0#0" in c["killed"]["cpu"], s["checker_text"]
    assert all(f["delivered"] == f["expected"] for f in s["checker"]["flows"])


# --- the launcher's own death ----------------------------------------------------------


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status and procutil.pid_alive(int(entry.name)):
            out.append(int(entry.name))
    return out


def kill_all(pids: list[int]) -> None:
    for pid in alive(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        # Polling /proc: there is no event for "a process appeared" to wait on.
        select.select([], [], [], 0.05)
    return bool(predicate())


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sigkill_to_a_chaos_run_leaves_no_actor_within_5_s(tmp_path: Path) -> None:
    """rxpath chaos killed mid-transfer, after it restarted a cpu: nobody is left."""
    rd = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import app; app()", "chaos", "--kill", "cpu",
         "--every", "1s", "--duration", "40", "--run-dir", str(rd), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        cwd=PROJECT_ROOT, env=env())
    seen: list[int] = []
    try:
        def restarted_and_flowing() -> bool:
            seen.extend(p for p in children_of(proc.pid) if p not in seen)
            log = rd / "logs" / "launcher.jsonl"
            text = log.read_text() if log.exists() else ""
            deliveries = list((rd / "deliveries").glob("*.jsonl")) if rd.exists() else []
            return ('"actor_restarted"' in text and len(children_of(proc.pid)) >= 7
                    and any(p.stat().st_size for p in deliveries))
        assert wait_until(restarted_and_flowing, 60), "no restart while data flowed"
        assert proc.poll() is None
        proc.kill()
        proc.wait(timeout=10)
        assert procutil.wait_pids_gone(seen, 5.0) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)
        kill_all(seen)


LAUNCHER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from actors.runtime.launcher import Launcher
    from tests.runtime_roles import make_topology
    topo = make_topology({"echo1": {"role": "echo"}, "echo2": {"role": "echo"}},
                         heartbeat_ms=200)
    with Launcher(topo, sys.argv[1], parent_death_signal=False) as launcher:
        print(json.dumps(launcher.pids()), flush=True)
        while True:
            launcher.poll(1000)
""")


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_liveness_pipe_alone_ends_the_actors_of_a_dead_launcher(tmp_path: Path) -> None:
    """Without the parent-death signal, the end of the launcher's pipe still tells."""
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER_SCRIPT, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=PROJECT_ROOT, env=env())
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the launcher did not start its actors"
        pids = list(json.loads(proc.stdout.readline()).values())
        assert len(pids) == 2 and alive(pids) == pids
        proc.kill()
        proc.wait(timeout=10)
        assert procutil.wait_pids_gone(pids, 5.0) == []
        logs = "".join((tmp_path / "run" / "logs" / f"{n}.jsonl").read_text()
                       for n in ("echo1", "echo2"))
        assert logs.count("launcher_gone") == 2
    finally:
        proc.kill()
        proc.wait(timeout=10)
        kill_all(pids)
