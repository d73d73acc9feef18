"""The exit statuses the README's table lists are the ones the commands use: the constants
behind each, every literal ``typer.Exit(N)`` in cli/, and the main failure paths run for
real (2 for each kind of bad input, 1 for what was not found, 3 from a coordinator whose
actors never come up). A run's 0, 1 and 4 come from the real runs of tests/test_verdict.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from actors.runtime import actor as runtime_actor
from actors.runtime import main as runtime_main
from cli.app import CONFIG_ERROR_EXIT
from cli.checker import EXIT_STATUS, FAIL, INCOMPLETE, PASS
from cli.coordinate import NOT_READY_EXIT
from cli.main import app
from cli.replay_cmd import EXIT_BAD_INPUT, EXIT_DIVERGED

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COORDINATE_TIMEOUT_S = 60


def readme_exit_table() -> dict[str, str]:
    """status -> the commands column, from the README's "Exit statuses" table."""
    text = README.read_text()
    section = text.split("### Exit statuses", 1)[1].split("\n#", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    assert cells[0] == ["status", "meaning", "commands"], cells[0]
    return {c[0]: c[2] for c in cells[1:]}


def test_the_readme_lists_every_exit_status_the_code_uses() -> None:
    table = readme_exit_table()
    assert list(table) == ["0", "1", "2", "3", "4", "77", "128+N", "70, 75"]
    assert EXIT_STATUS == {PASS: 0, FAIL: 1, INCOMPLETE: 4}
    assert CONFIG_ERROR_EXIT == 2 and EXIT_BAD_INPUT == 2 and runtime_main.EX_USAGE == 2
    assert EXIT_DIVERGED == 1
    assert NOT_READY_EXIT == 3 and table["3"] == "`coordinate`"
    assert (runtime_actor.EX_SOFTWARE, runtime_actor.EX_TEMPFAIL) == (70, 75)
    assert any("NO_ENGINE=77" in sh.read_text() for sh in (ROOT / "docker").glob("*.sh"))
    assert "`docker/e2e.sh`" in table["77"]
    # A literal status anywhere in cli/ is one of the table's.
    literal = {int(n) for path in (ROOT / "cli").rglob("*.py")
               for n in re.findall(r"typer\.Exit\((\d+)\)", path.read_text())}
    assert literal <= {0, 1, 2, 3, 4}, literal


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """Placeholders of the failure paths: a directory that is no run, one that does not
    exist, a bad scenario, a topology that is not JSON."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.toml").write_text("nic = 3\n")
    (tmp_path / "bad.json").write_text("{not json")
    return {"{empty}": str(tmp_path / "empty"), "{missing}": str(tmp_path / "missing"),
            "{bad_toml}": str(tmp_path / "bad.toml"), "{bad_json}": str(tmp_path / "bad.json"),
            "{script}": str(next((ROOT / "tests" / "drill").glob("*.pkt")))}


@pytest.mark.parametrize(("args", "status"), [
    # 2: nothing ran
    (["run", "{missing}"], 2),                        # no such scenario file
    (["run", "{bad_toml}"], 2),                       # a bad scenario
    (["run", "--set", "nic.queues=0"], 2),            # a bad --set
    (["chaos", "--set", "nic.queues=0"], 2),
    (["compose", "--set", "nic.queues=0"], 2),
    (["validate", "{bad_toml}"], 2),
    (["validate"], 2),                                # no file given
    (["run", "--no-such-option"], 2),                 # click's usage error
    (["stat", "{missing}"], 2),                       # no such run directory
    (["stat", "{empty}"], 2),                         # no summary.json
    (["ss", "{empty}"], 2),
    (["report", "{empty}"], 2),
    (["diff", "{missing}", "{empty}"], 2),
    (["replay", "{empty}"], 2),                       # no stack record
    (["explain", "{empty}"], 2),                      # neither --flow nor --segment
    (["drill", "{script}", "--profile", "ancient"], 2),
    (["coordinate", "--config", "{bad_json}"], 2),    # a bad topology
    (["actor", "nic", "--config", "{bad_json}"], 2),
    # 1: what was asked for is not there
    (["trace", "{empty}"], 1),                        # no trace records
    (["explain", "{empty}", "--segment", "1"], 1),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_failure_paths_exit_with_the_documented_status(
        args: list[str], status: int, inputs: dict[str, str]) -> None:
    argv = [inputs.get(a, a) for a in args]
    res = CliRunner().invoke(app, argv)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert res.exit_code == status, (argv, res.output)
    assert str(status) in readme_exit_table()
    cmd = args[0]
    if status == 1:
        assert f"`{cmd}`" in README.read_text().split("| 1 |", 1)[1].split("\n", 1)[0]


@pytest.mark.timeout(COORDINATE_TIMEOUT_S + 30)
def test_the_coordinator_exits_3_when_the_actors_never_come_up(tmp_path: Path) -> None:
    from tests.test_compose import _loopback_topology

    topo = _loopback_topology(None, tmp_path / "keys")
    (tmp_path / "topology.json").write_text(json.dumps(topo))
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "coordinate", "--config",
         str(tmp_path / "topology.json"), "--run-dir", str(tmp_path / "run"),
         "--ready-timeout", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=COORDINATE_TIMEOUT_S, check=False)
    assert proc.returncode == NOT_READY_EXIT == 3, proc.stderr[-2000:]
    assert "rxpath coordinate:" in proc.stderr
