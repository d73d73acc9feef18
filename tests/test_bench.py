"""`rxpath bench`: the figures it promises, and how it ranks a profile's functions."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from actors.runtime.cpuprofile import CPU_PROFILE_ENV, CpuSampler
from cli.bench import _trace_cost, bench_scenario, top_functions
from cli.run import run_scenario

KEYS = ("segments_per_s", "segments_per_s_trace_off", "raw_unbatched_per_s",
        "raw_batched_per_s", "ratio_unbatched", "model_segments_per_s",
        "model_ofo_segments_per_s", "cpu_us_per_segment", "cpu_us_per_segment_trace_off",
        "cpu_us_per_segment_gro_off", "cpu_us_per_segment_main_thread", "startup_s",
        "rss_kb", "compiled", "trace_cost")
ACTORS = {"peer", "nic", "cpu0", "cpu1", "stack", "r1", "r2"}


def test_top_functions_counts_a_function_once_across_its_lines(tmp_path: Path) -> None:
    raw = tmp_path / "stack.txt"
    raw.write_text(
        "main (a.py:1);loop (a.py:5);send (m.py:10) 6\n"
        "main (a.py:1);loop (a.py:5);send (m.py:12) 2\n"
        "main (a.py:1);loop (a.py:6);decode (w.py:3) 2\n")
    top = top_functions(raw)
    assert top[0] == ("send (m.py)", 0.8, 0.8)
    assert top[1] == ("decode (w.py)", 0.2, 0.2)
    assert top_functions(raw, n=1) == [("send (m.py)", 0.8, 0.8)]


def test_top_functions_of_an_empty_profile_is_empty(tmp_path: Path) -> None:
    raw = tmp_path / "idle.txt"
    raw.write_text("")
    assert top_functions(raw) == []


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_bench_json_reports_every_figure_with_integrity(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "--mbytes", "0.25", "--repeat", "1",
         "--messages", "2000", "--model-segments", "300", "--json", "--profile-actors",
         "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=220,
        check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert all(k in r for k in KEYS), sorted(set(KEYS) - set(r))
    assert r["integrity"] is True
    assert r["segments_per_s"] > 0 and r["raw_unbatched_per_s"] > r["segments_per_s"]
    for key in ("cpu_us_per_segment", "cpu_us_per_segment_trace_off",
                "cpu_us_per_segment_gro_off"):
        assert set(r[key]) >= ACTORS and r[key]["total"] > 0, key
    # The main threads' share: some, never more than the whole process's.
    main, cpu = r["cpu_us_per_segment_main_thread"], r["cpu_us_per_segment"]
    assert set(main) >= ACTORS
    assert all(0 < main[a] <= cpu[a] + 0.1 for a in ACTORS), (main, cpu)
    assert set(r["rss_kb"]) >= ACTORS
    assert set(r["trace_cost"]) == {"cpu", "rate"}
    assert all(-1 < v < 10 for v in r["trace_cost"].values()), r["trace_cost"]
    # --profile-actors: each actor's own CPU samples; py-spy's too, for those it attached
    # to before they exited (in so short a run, not always all).
    assert set(r["profiles"]) == ACTORS and set(r["profiles_wall"]) <= ACTORS
    assert set(r["profile_samples"]) == ACTORS
    assert all(m["clock"] == "thread" for m in r["profile_samples"].values())
    assert (tmp_path / "profiles" / "stack.cpu.txt").exists()
    assert json.loads((tmp_path / "bench.json").read_text()) == r


def _burn(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def test_the_cpu_sampler_charges_the_code_that_burnt_the_cpu(tmp_path: Path) -> None:
    sampler = CpuSampler()
    sampler.start()
    try:
        _burn(4_000_000)
        # Sleeping burns nothing, so it gets no samples on the thread's CPU clock.
        threading.Event().wait(0.2)
        _burn(4_000_000)
    finally:
        sampler.stop()
    assert sampler.clock == "thread"
    out = tmp_path / "me.cpu.txt"
    sampler.write(out)
    top = top_functions(out)
    assert top and top[0][0].startswith("_burn ") and top[0][1] > 0.8, top
    # At most the CPU used just before the wait began (Python runs the handler at the
    # next bytecode, which may be in the wait's own Python code).
    assert sum(own for name, own, _ in top if name.startswith("wait ")) < 0.1, top
    used = sum(int(line.rpartition(" ")[2]) for line in out.read_text().splitlines())
    assert used > 0


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_actors_sample_themselves_when_asked(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    prof = tmp_path / "profiles"
    monkeypatch.setenv(CPU_PROFILE_ENV, str(prof))
    summary = run_scenario(bench_scenario(1.0, None), tmp_path / "run", progress=False)
    assert summary["integrity"]
    assert {p.name for p in prof.iterdir()} == {f"{a}.cpu.{x}" for a in ACTORS
                                                for x in ("txt", "json")}
    meta = json.loads((prof / "stack.cpu.json").read_text())
    assert meta["samples"] > 0 and meta["clock"] == "thread" and meta["cpu_ms"] > 0
    assert top_functions(prof / "stack.cpu.txt"), "the stack burnt CPU, so it has samples"
    # Every sample is in the actor's loop; the project's paths are relative to it.
    lines = (prof / "stack.cpu.txt").read_text().splitlines()
    assert all(";_loop (actors/runtime/actor.py:" in line for line in lines), lines[:3]
    # and a library's relative to where it is installed (pyzmq's poll: zmq/sugar/poll.py).
    assert not any("site-packages" in line for line in lines), lines[:3]


def test_the_trace_cost_pairs_each_round_with_its_own_trace_off_run() -> None:
    def run(cpu: float, rate: float) -> dict[str, Any]:
        return {"cpu_us_per_segment": {"stack": cpu / 2, "peer": cpu / 2},
                "segments_per_s": rate}
    # Round 2 ran on a machine twice as slow: each pair still shows +25% CPU, -20% rate.
    on = [run(125, 800), run(250, 400), run(150, 800)]
    off = [run(100, 1000), run(200, 500), run(100, 1000)]
    assert _trace_cost(on, off) == {"cpu": 0.25, "rate": 0.2}
