"""One verdict: the CLI's output and exit status, summary.json, the printed summary and
``rxpath report`` all show the checker's verdict. Three real runs: a chaos run that kills
a cpu and a reader, a run stopped by its duration mid-transfer, and a run whose delivery
record is corrupted."""

from __future__ import annotations

import colorsys
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import cli.chaos
import cli.run
from actors.reader.actor import delivery_digest
from actors.runtime.launcher import PROJECT_ROOT
from cli.app import paint
from cli.chaos import ChaosAction, ChaosRunner
from cli.checker import EXIT_STATUS, FAIL, INCOMPLETE, PASS, load_deliveries
from cli.config import load_scenario
from cli.main import app
from cli.report import print_summary
from cli.report_html import CSS, VERDICT_CLASS, load_run, render

runner = CliRunner()
RUN_TIMEOUT_S = 60


def small(mb: float, duration: float = 30.0) -> list[str]:
    """--set options: the default topology's two flows at ``mb`` MB each."""
    n = int(mb * 1_000_000)
    return ["--set", f"flows[0].bytes={n}", "--set", f"flows[1].bytes={n}",
            "--set", f"duration={duration}"]


def assert_one_verdict(rd: Path, exit_code: int, output: str,
                       capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The checker's verdict is what summary.json, the CLI (its text and exit status),
    the printed summary and `rxpath report` show; returns the summary."""
    s = json.loads((rd / "summary.json").read_text())
    checker = s["checker"]
    state = checker["state"]
    assert state in EXIT_STATUS
    assert s["verdict"] == {"state": state, "why": checker["why"]}
    assert s["integrity"] is (state == "PASS")
    by_flow = {f["flow"]: f for f in checker["flows"]}
    records, bad = load_deliveries(rd)
    assert not bad
    for f in s["flows"]:
        c = by_flow[f["flow"]]
        assert f["verdict"] == c["state"]
        assert f["intact"] is (c["ok"] and c["state"] != "incomplete")
        # What every incarnation of its readers recorded, not the last one's counters.
        assert f["received"] == c["delivered"] == sum(
            r.length for r in records if r.flow == f["flow"])
    # The CLI.
    assert exit_code == EXIT_STATUS[state], output
    assert f"checker: {state}: {checker['why']}" in output
    # The printed summary (cli.report).
    capsys.readouterr()
    print_summary(s)
    printed = capsys.readouterr().out
    stopped = [ln for ln in printed.splitlines() if ln.startswith("stopped:")]
    assert stopped and stopped[-1].endswith(f"verdict {state}: {checker['why']}"), stopped
    assert "integrity" not in stopped[-1]
    # The duration it gives is the one the trace and the pcap span: from the traffic's
    # start (the actors' start-up before it is said apart).
    assert stopped[-1].startswith(f"stopped: {s['reason']} after {s['transfer_s']} s "
                                  f"(start-up {s['startup_s']} s);"), stopped
    if s["reason"] == "complete" and (rd / "trace.json").exists():
        # (a run its duration stopped goes on until the actors are stopped after the
        # final counters: its trace also shows that wind-down)
        trace = json.loads((rd / "trace.json").read_text())
        last_us = max(e["ts"] for e in trace["traceEvents"] if "ts" in e)
        assert last_us / 1e6 <= s["transfer_s"] + 0.5, (last_us, s["transfer_s"])
    # rxpath report.
    res = runner.invoke(app, ["report", str(rd)])
    assert res.exit_code == 0, res.output
    page = (rd / "report.html").read_text()
    shown = re.findall(r'<span class="(\w+)" id="verdict">verdict (\w+)</span>', page)
    assert shown == [(VERDICT_CLASS[state], state)], shown
    flow_cells = re.findall(r"<tr><td>(f\d)</td>.*?<td>([^<]*)</td></tr>", page)
    assert dict(flow_cells) == {f["flow"]: f["verdict"] for f in s["flows"]}
    return s


@dataclass
class KillWhenFlowing:
    """Kills on observed events, not moments: each (target, stack segments) step once the
    stack has handled that many segments and the target has reported and delivered."""

    steps: list[tuple[str, int]]
    chaos: ChaosRunner = field(default_factory=lambda: ChaosRunner([]))

    def __call__(self, launcher: Any, supervisor: Any, t: float) -> None:
        if not self.steps:
            return
        target, segments = self.steps[0]
        stack = (launcher.last_counters.get("stack") or {}).get("role") or {}
        proc = launcher.process(target)
        if not (int(stack.get("segments", 0)) >= segments and proc.running
                and proc.incarnation in launcher.reports.get(target, {})):
            return
        if proc.role == "reader":
            mine = launcher.run_dir / "deliveries" / f"{target}.{proc.incarnation}.jsonl"
            if not mine.is_file() or mine.stat().st_size == 0:
                return
        self.steps.pop(0)
        self.chaos.done.append(self.chaos.perform(launcher, supervisor,
                                                  ChaosAction(t, "kill", target), t))


def with_hook(monkeypatch: pytest.MonkeyPatch, module: Any,
              hook: Callable[[Any, Any, float], None],
              done: list[dict[str, Any]] | None = None) -> None:
    """Make ``module``'s run_scenario run with ``hook`` (and record into the CLI's own
    chaos runner what it did, so `rxpath chaos` prints it)."""
    real = cli.run.run_scenario

    def run_scenario(sc: Any, run_dir: Path, **kw: Any) -> dict[str, Any]:
        given = kw.pop("chaos", None)

        def both(launcher: Any, supervisor: Any, t: float) -> None:
            hook(launcher, supervisor, t)
            if isinstance(given, ChaosRunner) and done is not None:
                given.done[:] = done
        return real(sc, run_dir, chaos=both, **kw)

    monkeypatch.setattr(module, "run_scenario", run_scenario)


@pytest.mark.chaos
@pytest.mark.integration
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_chaos_killing_a_cpu_and_a_reader_is_one_pass(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    kills = KillWhenFlowing([("cpu0", 150), ("r1", 400)])
    with_hook(monkeypatch, cli.chaos, kills, kills.chaos.done)
    res = runner.invoke(app, ["chaos", *small(3.0), "--run-dir", str(run_dir)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert [d["result"] for d in kills.chaos.done] == ["SIGKILL", "SIGKILL"], res.output
    assert "kill       cpu0" in res.output and "kill       r1" in res.output
    s = assert_one_verdict(run_dir, res.exit_code, res.output, capsys)
    assert s["reason"] == "complete", s["checker_text"]
    assert s["verdict"]["state"] == "PASS", s["checker_text"]
    assert s["checker"]["conservation"]["checked"], s["checker_text"]
    # f1's bytes were delivered by two incarnations of r1; the living one's counters
    # hold only its own part, and the verdict counts them all.
    files = sorted(p.name for p in (run_dir / "deliveries").glob("r1.*.jsonl")
                   if p.stat().st_size)
    assert files[:2] == ["r1.0.jsonl", "r1.1.jsonl"], files
    f1 = next(f for f in s["flows"] if f["flow"] == "f1")
    assert f1["intact"] and f1["received"] + f1["delivered_then_lost"] == f1["bytes"]
    assert int(s["readers"]["r1"].get("bytes", 0)) < f1["bytes"]


@pytest.mark.integration
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_a_run_stopped_by_its_duration_is_incomplete(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 40 MB per flow cannot arrive in 1 s: the run stops mid-transfer.
    cmd = [sys.executable, "-m", "cli.main", "run", *small(40.0, duration=1.0), "-q",
           "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S - 10, check=False)
    s = assert_one_verdict(run_dir, proc.returncode, proc.stdout, capsys)
    assert s["reason"] == "duration"
    assert s["verdict"]["state"] == "INCOMPLETE", s["checker_text"]
    assert proc.returncode == 4
    verdicts = [ln for ln in proc.stdout.splitlines()
                if ln.startswith(("checker:", "stopped:", "  conservation:", "f1 ", "f2 "))]
    assert verdicts and not any("BROKEN" in ln or "FAIL" in ln for ln in verdicts), verdicts
    records, _ = load_deliveries(run_dir)
    for f in s["checker"]["flows"]:
        assert f["ok"] and f["state"] == "incomplete"
        assert 0 < f["delivered"] < f["expected"]
        # What arrived is an exact prefix: contiguous from byte 0, each chunk's digest
        # checked by the checker (ok above).
        pos = 0
        for r in sorted((r for r in records if r.flow == f["flow"]), key=lambda r: r.off):
            assert r.off == pos, (f["flow"], r.where())
            pos = r.end
        assert pos == f["delivered"]
    c = s["checker"]["conservation"]
    assert c["checked"] and c["ok"], s["checker_text"]
    # What was in flight at the stop is counted, not reported as a broken equation.
    assert c["in_flight"] == sum(c["in_flight_by_edge"].values()) >= 0
    assert all(name.endswith("+ in flight") for name in c["equations"]
               if name.startswith(("nic rx_packets", "frames to stack")))
    assert all(a == b for a, b in c["equations"].values())


def corrupt_first_record(path: Path) -> bool:
    """Overwrite, in place, the digest of the first delivery record in ``path`` with the
    digest of other bytes (the reader appends after it, undisturbed)."""
    if not path.is_file():
        return False
    with path.open("r+b") as fh:
        line = fh.readline()
        if not line.endswith(b"\n"):
            return False
        digest = json.loads(line)["digest"]
        wrong = delivery_digest(b"not what the peer sent")
        assert len(wrong) == len(digest) and wrong != digest
        at = line.index(f'"{digest}"'.encode()) + 1
        fh.seek(at)
        fh.write(wrong.encode())
    return True


@pytest.mark.integration
@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_a_corrupted_delivery_fails_everywhere(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    done: list[bool] = []

    def corrupt(launcher: Any, supervisor: Any, t: float) -> None:
        if not done and corrupt_first_record(run_dir / "deliveries" / "r1.0.jsonl"):
            done.append(True)

    with_hook(monkeypatch, cli.run, corrupt)
    res = runner.invoke(app, ["run", *small(2.0), "-q", "--run-dir", str(run_dir)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert done, "r1 never recorded a delivery"
    s = assert_one_verdict(run_dir, res.exit_code, res.output, capsys)
    assert s["verdict"]["state"] == "FAIL" and res.exit_code == 1
    assert s["verdict"]["why"].startswith("f1: altered: r1#0 line 1: [0, "), s["verdict"]
    flows = {f["flow"]: f["verdict"] for f in s["flows"]}
    assert flows == {"f1": "BROKEN", "f2": "intact"}


# --- the verdict on counters and records (no processes) --------------------------------


def path_counters(dmad: int, cpu_in: int, to_stack: int, segments: int) -> dict[str, Any]:
    return {"nic": {"role": {"ethtool": {"rx_packets": dmad}}},
            "cpu0": {"role": {"frames_in": cpu_in, "frames_to_stack": to_stack}},
            "stack": {"role": {"segments": segments}}}


def test_frames_in_flight_at_a_stop_are_counted_not_broken() -> None:
    from cli.checker import check_conservation

    # The nic DMA'd 111; cpu0 had counted 110 when it was asked (downstream first).
    c = check_conservation(path_counters(111, 110, 110, 108), ["cpu0"], complete=False)
    assert c["ok"] and c["in_flight"] == 3
    assert c["in_flight_by_edge"] == {"nic rx_packets": 1, "frames to stack": 2}
    # A finished run has nothing in flight: the same figures break an equation.
    assert not check_conservation(path_counters(111, 110, 110, 108), ["cpu0"])["ok"]
    # More arrived than left: no flight explains frames from nowhere.
    assert not check_conservation(path_counters(110, 111, 111, 111), ["cpu0"],
                                  complete=False)["ok"]


def test_verdict_states_and_exit_statuses() -> None:
    from cli.checker import Verdict, check_flow
    from tests.test_chaos import FLOW_ID, SIZE, rec

    ok = {"ok": True, "checked": True, "equations": {}}
    whole = check_flow("f1", FLOW_ID, SIZE, [rec(0, 4000, line=1), rec(4000, 6000, line=2)])
    prefix = check_flow("f1", FLOW_ID, SIZE, [rec(0, 4000, line=1)], complete_expected=False)
    altered = check_flow("f1", FLOW_ID, SIZE, [rec(0, 4000, line=1, digest="00" * 8)],
                         complete_expected=False)
    assert (whole.state, prefix.state, altered.state) == ("intact", "incomplete", "BROKEN")
    v = Verdict(True, [whole], ok)
    assert (v.state, v.exit_status) == ("PASS", 0)
    v = Verdict(True, [prefix], {**ok, "in_flight": 7})
    assert (v.state, v.exit_status) == ("INCOMPLETE", 4)
    assert v.why.endswith("f1 4000/10000 bytes delivered, an exact prefix so far; "
                          "7 frames in flight at the stop")
    v = Verdict(False, [altered], ok)
    assert (v.state, v.exit_status) == ("FAIL", 1) and v.why.startswith("f1: altered: r1#0")
    broken = {"ok": False, "checked": True, "equations": {"a = b": [3, 4]}}
    assert Verdict(False, [whole], broken).why == "conservation: a = b: 3 != 4"


def test_a_summary_without_a_verdict_falls_back_to_its_checker() -> None:
    from cli.checker import summary_verdict

    assert summary_verdict({"integrity": True})["state"] == "PASS"
    assert summary_verdict({"integrity": True, "checker": {"ok": False}})["state"] == "FAIL"
    assert summary_verdict({"verdict": {"state": "INCOMPLETE", "why": "x"}}) == {
        "state": "INCOMPLETE", "why": "x"}


@pytest.mark.parametrize("command", ["run", "chaos", "coordinate"])
def test_the_help_gives_the_exit_status_of_each_verdict(command: str) -> None:
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "1 FAIL" in text and "4 INCOMPLETE" in text, text


def test_incomplete_is_yellow_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    text = ("checker: INCOMPLETE: stopped before every flow ended: f1 10/20 bytes delivered\n"
            "  f1: incomplete, 10/20 bytes delivered\n  f2: intact\n  f3: BROKEN")
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = paint(text, Tty())
    for word in ("INCOMPLETE", "incomplete"):
        assert typer.style(word, fg="yellow", bold=True) in coloured, coloured
    assert typer.style("intact", fg="green", bold=True) in coloured
    assert typer.style("BROKEN", fg="red", bold=True) in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == text
    assert paint(text, io.StringIO()) == text  # not a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    assert paint(text, Tty()) == text


def _hue_deg(css_class: str) -> float:
    """The hue of a CSS class's text colour in the report's style sheet."""
    m = re.search(r"\." + css_class + r"\{color:#([0-9a-f]{6}|[0-9a-f]{3})\b", CSS)
    assert m, css_class
    digits = m[1] if len(m[1]) == 6 else "".join(c * 2 for c in m[1])
    r, g, b = (int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4))
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360


def test_the_reports_verdict_badge_has_the_verdicts_colour(tmp_path: Path) -> None:
    for state in (PASS, FAIL, INCOMPLETE):
        rd = tmp_path / state
        rd.mkdir()
        (rd / "summary.json").write_text(json.dumps({
            "profile": "legacy", "seed": 1, "reason": "duration", "elapsed_s": 1.0,
            "flows": [], "verdict": {"state": state, "why": "x"}}))
        page = render(load_run(rd))
        badge = re.findall(r'<span class="(\w+)" id="verdict">verdict (\w+)</span>', page)
        assert badge == [(VERDICT_CLASS[state], state)]
    assert VERDICT_CLASS == {PASS: "ok", FAIL: "bad", INCOMPLETE: "warn"}
    # green, red and yellow (dark enough to read on white)
    assert 90 <= _hue_deg("ok") <= 150
    assert _hue_deg("bad") <= 10 or _hue_deg("bad") >= 350
    assert 40 <= _hue_deg("warn") <= 60


class MovingPath:
    """A launcher stand-in whose wire never goes quiet: every snapshot of the nic has one
    more frame DMA'd, and the cpu, asked later, has counted one more than that."""

    def __init__(self) -> None:
        self.frames = 0
        self.order: list[list[str]] = []

    def request_stats(self, names: list[str], timeout_s: float = 5.0
                      ) -> dict[str, dict[str, Any]]:
        self.order.append(list(names))
        self.frames += 1
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            if name == "nic":
                out[name] = {"role": {"ethtool": {"rx_packets": self.frames}}}
            elif name.startswith("cpu"):
                out[name] = {"role": {"frames_in": self.frames}}
            else:
                out[name] = {"role": {}}
        return out


def test_final_stats_of_a_path_still_moving_are_taken_downstream_first_and_say_so() -> None:
    sc = load_scenario(None)
    fake = MovingPath()
    final, busy = cli.run._final_stats(fake, sc, {"r1", "r2"},  # type: ignore[arg-type]
                                       settle_s=0.0)
    assert busy
    # The last round asked the stack and readers first and the wire last: a frame that
    # moved meanwhile is in flight, never counted downstream before it left upstream.
    assert fake.order[-3][0] == "stack" and fake.order[-1] == ["peer", "nic"]
    nic = final["nic"]["role"]["ethtool"]["rx_packets"]
    assert nic >= final["cpu0"]["role"]["frames_in"]
