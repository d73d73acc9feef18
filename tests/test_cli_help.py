"""The command line's looks: help of every command, --version, -h, --set, validate's
error list and --show toml, the newest-run default, the progress line and colour."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import package_version, paint
from cli.config import ConfigError, Overrides, load_scenario, parse_scenario, to_toml
from cli.main import COMMANDS, app
from cli.options import LATEST_RUN, mark_latest
from cli.run import progress_line

runner = CliRunner()
VISIBLE = [name for name, c in COMMANDS.items() if not c.hidden]


def test_every_registered_command_is_described() -> None:
    names = {i.name or (i.callback.__name__ if i.callback else "")
             for i in app.registered_commands}
    names = {n.replace("_", "-").removesuffix("-cmd") for n in names}
    assert names == set(COMMANDS)


@pytest.mark.parametrize("name", VISIBLE)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_has_examples_and_no_type_labels(name: str, flag: str) -> None:
    res = runner.invoke(app, [name, flag])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "Examples:" in text
    for example in COMMANDS[name].examples:
        assert f"  {example}" in text  # one per line, not re-wrapped
    assert "<bool>" not in text and not re.search(
        r"<(bool|int|float|str|path|file|list\[[^>]*\]|[a-z]+ range)>", text, re.I)
    assert "``" not in text
    assert all(len(line) <= 80 for line in text.splitlines()), text


def test_root_help_lists_users_commands_only() -> None:
    res = runner.invoke(app, ["-h"])
    assert res.exit_code == 0
    listed = re.findall(r"^  ([a-z][a-z-]*)\s", res.output.split("Commands:")[1], re.M)
    assert set(listed) == set(VISIBLE)
    assert "--version" in res.output
    # Hidden, not gone: the containers still start them.
    assert runner.invoke(app, ["actor", "-h"]).exit_code == 0
    assert runner.invoke(app, ["coordinate", "-h"]).exit_code == 0


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"rxpath {package_version()}"
    assert re.fullmatch(r"\d+\.\d+.*", package_version())


# -- --set ----------------------------------------------------------------------------------


def test_set_any_key_as_a_toml_value() -> None:
    sc = load_scenario("configs/fast-path.toml", Overrides(sets=(
        "nic.queues=4", "cpu.count=4", "readers[0].think_us=50", "log.level=debug",
        "impairments.loss=0.01", 'description="changed"', "sysctl.tcp_rmem=[4096, 9000, 90000]",
        "flows[1].bytes=1000", "readers[1].flow=f2")))
    assert (sc.nic.queues, sc.cpu.count, sc.readers[0].think_us) == (4, 4, 50.0)
    assert sc.log.level == "debug" and sc.impairments.loss == 0.01
    assert sc.description == "changed" and sc.sysctl.tcp_rmem == (4096, 9000, 90000)
    assert [f.bytes for f in sc.flows] == [4_000_000, 1000]  # flows[1] added
    assert [r.flow for r in sc.readers] == ["f1", "f2"]


@pytest.mark.parametrize(("sets", "message"), [
    (("nic.qeues=1",), 'command line: nic.qeues: unknown key (did you mean "queues"?)'),
    (("readers[0].think_us=slow",),
     'command line: readers[0].think_us: expected a number >= 0, got "slow"'),
    (("flows[5].bytes=1",), "command line: flows[5]: expected an index <= 1"),
    (("nic",), "command line: --set: expected KEY.PATH=VALUE"),
    (("seed=[1,",), "command line: seed: expected a TOML value"),
    (("nic.queues.x=1",), "command line: nic.queues: expected an integer >= 1, got a table"),
])
def test_set_errors_name_the_key(sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario("configs/fast-path.toml", Overrides(sets=sets))
    assert str(info.value).startswith(message), str(info.value)


def test_set_on_the_command_line_exits_2() -> None:
    res = runner.invoke(app, ["validate", "configs/fast-path.toml", "--set", "cpu.cont=2"])
    assert res.exit_code == 2
    assert "command line: cpu.cont: unknown key" in res.stderr
    res = runner.invoke(app, ["validate", "configs/fast-path.toml", "--show",
                              "--set", "nic.queues=4"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.split("\n", 1)[1])["nic"]["queues"] == 4
    for cmd in ("run", "chaos", "compose"):
        bad = runner.invoke(app, [cmd, "configs/fast-path.toml", "--set", "nic.queues=0"])
        assert bad.exit_code == 2 and "nic.queues: expected an integer >= 1" in bad.stderr


# -- validate -----------------------------------------------------------------------------


def test_validate_reports_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('seed = -1\nbogus = 3\n[nic]\nqueues = "four"\nring_size = 0\n'
                   '[[flows]]\nname = "f1"\n[[readers]]\nname = "r1"\nthink_us = "slow"\n')
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    keys = [line.split(": ")[1] for line in res.stderr.splitlines()]
    assert sorted(keys) == ["bogus", "nic.queues", "nic.ring_size", "readers[0].think_us",
                            "seed"]


def test_validate_show_toml_loads_back(tmp_path: Path) -> None:
    for path in sorted(Path("configs").glob("*.toml")):
        res = runner.invoke(app, ["validate", "--show", "toml", str(path)])
        assert res.exit_code == 0, res.output
        text = res.stdout.split("\n", 1)[1]
        assert parse_scenario(text, "shown").to_dict() == load_scenario(path).to_dict()
    assert to_toml({"a": 1, "t": {"x": [1, 2]}, "arr": [{"k": "v"}]}) == \
        'a = 1\n\n[t]\nx = [1, 2]\n\n[[arr]]\nk = "v"\n'


# -- the newest run ---------------------------------------------------------------------------


def test_commands_default_to_runs_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for cmd in ("stat", "ss", "trace", "report", "explain"):
        res = runner.invoke(app, [cmd] + (["--flow", "f1", "--seq", "1"]
                                          if cmd == "explain" else []))
        assert res.exit_code == 2, (cmd, res.output)
        assert f"{LATEST_RUN} does not exist" in res.stderr
    res = runner.invoke(app, ["stat", "nowhere"])
    assert res.exit_code == 2 and "nowhere: no such run directory" in res.stderr
    run = Path("runs") / "20250101-000000"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"nstat": {"TcpInSegs": 7}}))
    mark_latest(tmp_path / "elsewhere")  # not under runs/: no link
    assert not LATEST_RUN.is_symlink()
    mark_latest(run)
    assert LATEST_RUN.is_symlink() and os.readlink(LATEST_RUN) == run.name
    res = runner.invoke(app, ["stat"])
    assert res.exit_code == 0 and re.search(r"TcpInSegs\s+7", res.stdout)


# -- the live line and colour -----------------------------------------------------------------


@pytest.mark.parametrize("columns", [20, 40, 80, 132])
def test_progress_line_never_wraps(columns: int) -> None:
    pieces = ["[##########----------]   4.00/8.00 MB", "f1  50% f2  50% f3 100%",
              "backlog 3 rcvq 44 ofo 2 prequeue 9", "123456 segs"]
    line = progress_line(pieces, "  12.5 s", columns)
    assert len(line) == columns - 1
    assert line.startswith(pieces[0][:columns - 1])
    if columns >= 80:
        assert "12.5 s" in line and "f1  50%" in line


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    text = "checker: PASS\n  f1: intact\n  f2: BROKEN"
    assert paint(text, io.StringIO()) == text
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = paint(text, Tty())
    assert "\x1b[32m" in coloured and "\x1b[31m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == text
    monkeypatch.setenv("NO_COLOR", "1")
    assert paint(text, Tty()) == text
