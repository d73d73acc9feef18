"""``rxpath bench``: the emulator's speed, side by side with the raw transport it runs on.

Every figure comes from the same invocation on the same machine, repeated ``--repeat``
times and reported as the median: the default topology on a clean wire end to end (trace
on and off), a plain pyzmq + msgpack chain with as many hops as a segment crosses (peer ->
nic -> cpu -> stack), unbatched and in NAPI-sized batches, and the kernel model driven
in-process (no processes, no sockets). The ratios say what the emulation costs over the
bare transport; the per-actor CPU table says where it goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.cpuprofile import CPU_PROFILE_ENV
from actors.runtime.hopbench import run_hop_benchmark
from actors.runtime.launcher import Launcher
from actors.runtime.supervisor import Supervisor
from actors.scenario import AckImpairmentsConfig, ImpairmentsConfig, Scenario
from cli.app import app
from cli.config import parse_scenario
from cli.modelbench import run_model_benchmark
from cli.options import ProfileOption, load_or_exit, make_overrides
from cli.report import table
from cli.run import default_run_dir, run_scenario
from protocol.compiled import is_compiled

DATA_HOPS = 3  # peer -> nic -> cpu -> stack
HOP_LINKS = [("nic", "peer"), ("cpu*", "nic"), ("stack", "cpu*"), ("nic", "stack"),
             ("peer", "nic"), ("reader*", "stack"), ("stack", "reader*")]


def bench_scenario(mbytes: float, profile: str | None) -> Scenario:
    sc = load_or_exit(None, make_overrides(profile=profile, duration=120.0))
    flows = tuple(replace(f, bytes=int(mbytes * 1e6)) for f in sc.flows)
    return replace(sc, flows=flows, impairments=ImpairmentsConfig(),
                   ack_impairments=AckImpairmentsConfig(),
                   description=f"bench: {len(flows)} flows x {mbytes:g} MB, clean wire")


def scale_scenario(flows: int, readers: int = 16, cpus: int = 4, nbytes: int = 20_000,
                   profile: str = "legacy") -> Scenario:
    """``flows`` connections on a clean wire, shared round-robin by ``readers`` epoll
    servers, over ``cpus`` cpus, through a listener configured for that many clients
    (listen(fd, 1024) and somaxconn to match: 4.13's 128 would overflow at once)."""
    backlog = max(128, flows)
    lines = [f'profile = "{profile}"', "seed = 1", "duration = 300.0",
             f'description = "scale: {flows} flows to {readers} epoll servers over {cpus} cpus"',
             f"[cpu]\ncount = {cpus}", f"[nic]\nqueues = {cpus}",
             f"[stack]\nlisten_backlog = {backlog}",
             f"[sysctl]\nsomaxconn = {backlog}\ntcp_max_syn_backlog = {backlog}",
             "[impairments]"]
    for i in range(flows):
        lines.append(f'[[flows]]\nname = "f{i + 1}"\nbytes = {nbytes}\n'
                     f'reader = "r{i % readers + 1}"')
    return parse_scenario("\n".join(lines) + "\n", f"<scale: {flows} flows>")


def scale_run(sc: Scenario, rd: Path, progress: bool) -> dict[str, Any]:
    """One run of a scale scenario: did it complete intact, with no message lost between
    the actors, and what did each role cost."""
    e2e = end_to_end(sc, rd, trace=True, progress=progress)
    counters = json.loads((rd / "counters.json").read_text())
    summary = json.loads((rd / "summary.json").read_text())
    lost = sum(int((c.get("transport") or {}).get("transport_lost", 0))
               for c in counters.values())
    rejected = sum(sum(((c.get("transport") or {}).get("rejected_messages") or {}).values())
                   for c in counters.values())
    by_role: dict[str, list[str]] = {}
    for name in e2e["cpu_us_per_segment"]:
        role = "reader" if name.startswith("r") else "cpu" if name.startswith("cpu") else name
        by_role.setdefault(role, []).append(name)
    return {
        "flows": len(sc.flows), "readers": len(sc.readers), "cpus": sc.cpu.count,
        "bytes_per_flow": sc.flows[0].bytes,
        "complete": summary["reason"] == "complete",
        "intact": bool(summary["integrity"] and summary["checker"]["ok"]),
        "transport_lost": lost, "rejected_messages": rejected,
        "seconds": round(e2e["seconds"], 2), "segments": e2e["segments"],
        "segments_per_s": round(e2e["segments_per_s"]),
        "startup_s": round(e2e["startup_s"], 2),
        "listen_overflows": int(summary["nstat"].get("TcpExtListenOverflows", 0)),
        # per role: CPU per segment summed over its processes, the largest RSS among them
        "cpu_us_per_segment": {role: round(sum(e2e["cpu_us_per_segment"][n] for n in names), 1)
                               for role, names in by_role.items()},
        "max_rss_kb": {role: max(e2e["rss_kb"].get(n, 0) for n in names)
                       for role, names in by_role.items()},
    }


def _print_scale(r: dict[str, Any]) -> None:
    verdict = "intact" if r["intact"] else "BROKEN"
    typer.echo(f"\n{r['flows']} flows x {r['bytes_per_flow']:,} B to {r['readers']} epoll "
               f"servers over {r['cpus']} cpus: {'complete' if r['complete'] else 'INCOMPLETE'}"
               f", {verdict}, transport lost {r['transport_lost']}, rejected "
               f"{r['rejected_messages']}, ListenOverflows {r['listen_overflows']}")
    typer.echo(f"{r['segments']:,} segments in {r['seconds']:.2f} s "
               f"({r['segments_per_s']:,}/s), start-up {r['startup_s']:.2f} s\n")
    typer.echo(table([(role, f"{us:.1f}", f"{r['max_rss_kb'][role] / 1024:.1f}")
                      for role, us in r["cpu_us_per_segment"].items()],
                     ("role", "cpu us/segment (all its processes)", "max RSS MB")))


def hop_latencies(counters: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Mean one-way delay per hop kind, from every receiver's runtime counters."""
    out = []
    for dst_pat, src_pat in HOP_LINKS:
        total = n = 0.0
        for dst, c in counters.items():
            if not _match(dst, dst_pat):
                continue
            for src, lat in ((c.get("runtime") or {}).get("link_latency_us") or {}).items():
                if _match(src, src_pat):
                    total += lat["mean"] * lat["messages"]
                    n += lat["messages"]
        if n:
            out.append((f"{src_pat} -> {dst_pat}", total / n, int(n)))
    return out


def _match(name: str, pat: str) -> bool:
    if pat == "reader*":
        return name.startswith("r") and name not in ("run",)
    return name.startswith(pat[:-1]) if pat.endswith("*") else name == pat


@contextlib.contextmanager
def _actor_env(name: str, value: str | None) -> Iterator[None]:
    """``name=value`` in the environment of the actors started inside (they inherit
    it), restored after; None leaves it as it is."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class ActorProfiler:
    """Every actor of one run profiled from its first moment of traffic until its
    process exits, as collapsed stacks in ``RUN_DIR/profiles/``:

    - ``<actor>.cpu.txt``: the actor's own sampler, by its main thread's CPU time
      (:mod:`actors.runtime.cpuprofile`); the table `bench` prints comes from these;
    - ``<actor>.txt``: py-spy attached to it, if installed (wall time: the flame graph
      of where each actor spends its time, waiting for a core included)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.names: list[str] = []
        self.exe = shutil.which("py-spy")

    def sampling(self) -> contextlib.AbstractContextManager[None]:
        """Actors started inside sample themselves."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return _actor_env(CPU_PROFILE_ENV, str(self.out_dir))

    def hook(self, launcher: Launcher, _sup: Supervisor, _elapsed: float) -> None:
        if self.names:
            return
        self.names = sorted(launcher.pids())
        if self.exe is None:
            return
        for name, pid in launcher.pids().items():
            self.procs[name] = subprocess.Popen(
                [str(self.exe), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                 "--nonblocking", "-o", str(self.out_dir / f"{name}.txt")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)

    def finish(self) -> None:
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)  # py-spy ends and writes when its target exits
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def top_functions(collapsed: Path, n: int = 8) -> list[tuple[str, float, float]]:
    """The functions with the most self time in a collapsed-stacks file (py-spy's
    ``--format raw``, or an actor's CPU samples): (name, self share, total share incl.
    callees), lines of one function counted together.

    py-spy samples wall time of a running or runnable thread, so on an oversubscribed
    machine calls that wake another process (ZeroMQ sends) weigh more than their CPU."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        names = [frame.split(" (", 1)[0] + _module_of(frame) for frame in stack.split(";")]
        own[names[-1]] = own.get(names[-1], 0) + k
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + k
        total += k
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return [(name, c / total, inclusive[name] / total) for name, c in ranked] if total else []


def _module_of(frame: str) -> str:
    """" (path)" of a py-spy frame "func (path:line)", without the line."""
    _, _, where = frame.partition(" (")
    return f" ({where.rsplit(':', 1)[0]})" if where else ""


def end_to_end(sc: Scenario, rd: Path, *, trace: bool, progress: bool,
               hook: Callable[[Launcher, Supervisor, float], None] | None = None,
               ) -> dict[str, Any]:
    with _actor_env("RXPATH_TRACE", None if trace else "0"):  # 0: no trace recording
        summary = run_scenario(sc, rd, progress=progress, chaos=hook)
    counters = json.loads((rd / "counters.json").read_text())
    segs = int(summary["segments"])
    seconds = float(summary["transfer_s"])
    cpu_us: dict[str, float] = {}
    main_us: dict[str, float] = {}
    rss: dict[str, int] = {}
    for name, c in sorted(counters.items()):
        rt = c.get("runtime") or {}
        if "cpu_ns_since_start" in rt and segs:
            cpu_us[name] = rt["cpu_ns_since_start"] / 1e3 / segs
        if "main_thread_cpu_ns_since_start" in rt and segs:
            main_us[name] = rt["main_thread_cpu_ns_since_start"] / 1e3 / segs
        if "max_rss_kb" in rt:
            rss[name] = int(rt["max_rss_kb"])
    return {
        "integrity": bool(summary["integrity"]), "segments": segs, "seconds": seconds,
        "segments_per_s": segs / seconds if seconds else 0.0,
        "mbit_per_s": sum(f["received"] for f in summary["flows"]) * 8 / seconds / 1e6
        if seconds else 0.0,
        "startup_s": float(summary.get("startup_s", 0.0)),
        "cpu_us_per_segment": cpu_us, "main_thread_us_per_segment": main_us, "rss_kb": rss,
        "hops": hop_latencies(counters),
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _median_map(maps: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for m in maps for k in m})
    return {k: _median([m[k] for m in maps if k in m]) for k in keys}


def _ratio(runs: list[dict[str, Any]], raw: list[dict[str, Any]], digits: int) -> float:
    """The median over rounds of a run's rate against the raw chain of its own round."""
    return round(_median([r["segments_per_s"] / u["messages_per_s"]
                          for r, u in zip(runs, raw, strict=True)]), digits)


def _cpu_per_segment(runs: list[dict[str, Any]], key: str = "cpu_us_per_segment",
                     ) -> dict[str, float]:
    """Each actor's median CPU µs per segment over the runs, and their total."""
    cpu = _median_map([r[key] for r in runs])
    return {**{k: round(v, 1) for k, v in cpu.items()}, "total": round(sum(cpu.values()), 1)}


def _trace_cost(on: list[dict[str, Any]], off: list[dict[str, Any]]) -> dict[str, float]:
    """What recording the trace costs, each round's trace-on run against its own
    trace-off run (the machine's speed drifts between rounds), medians: the extra CPU
    per segment, and the share of the rate lost."""
    pairs = list(zip(on, off, strict=True))
    totals = [(sum(a["cpu_us_per_segment"].values()), sum(b["cpu_us_per_segment"].values()))
              for a, b in pairs]
    cpu = [t_on / t_off - 1 for t_on, t_off in totals if t_off]
    rate = [1 - a["segments_per_s"] / b["segments_per_s"] for a, b in pairs
            if b["segments_per_s"]]
    return {"cpu": round(_median(cpu), 3), "rate": round(_median(rate), 3)}


@app.command()
def bench(
    mbytes: Annotated[float, typer.Option("--mbytes", help="MB per flow.")] = 8.0,
    profile: ProfileOption = None,
    repeat: Annotated[int, typer.Option(min=1, help="Runs of each measurement; the "
                                        "medians are reported.")] = 5,
    messages: Annotated[int, typer.Option(help="Messages for the raw chain.")] = 100_000,
    model_segments: Annotated[int, typer.Option(help="Segments for the in-process model "
                                                "benchmark.")] = 50_000,
    profile_actors: Annotated[bool, typer.Option(
        "--profile-actors", help="Profile every actor during the first run (by its CPU "
        "time, and with py-spy if installed: RUN_DIR/profiles/) and print each one's "
        "hottest functions.")] = False,
    scale: Annotated[int, typer.Option(
        "--scale", min=0, help="Instead: one run of this many flows (20 KB each) to 16 "
        "epoll servers over 4 cpus; is it complete and intact, with no message lost, and "
        "what each role costs.")] = 0,
    run_dir: Annotated[Path | None, typer.Option("--run-dir")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Segments/s end to end (trace on and off), the raw pyzmq chain and the in-process
    model beside them, CPU per segment of every actor; medians of --repeat runs.

    Example: rxpath bench --mbytes 8 --repeat 5 --json; rxpath bench --scale 1000
    """
    rd = run_dir or default_run_dir()
    progress = not json_out and sys.stderr.isatty()
    if scale:
        res = scale_run(scale_scenario(scale, profile=profile or "legacy"), rd, progress)
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "bench.json").write_text(json.dumps({"scale": res}, indent=2))
        if json_out:
            typer.echo(json.dumps({"scale": res}, indent=2))
        else:
            _print_scale(res)
        if not (res["complete"] and res["intact"] and not res["transport_lost"]):
            raise typer.Exit(1)
        return
    sc = bench_scenario(mbytes, profile)
    runs_on: list[dict[str, Any]] = []
    runs_off: list[dict[str, Any]] = []
    runs_nogro: list[dict[str, Any]] = []  # the same topology with the NIC's GRO off
    sc_nogro = replace(sc, nic=replace(sc.nic, gro=False))
    raw1: list[dict[str, Any]] = []
    raw64: list[dict[str, Any]] = []
    model: list[dict[str, float]] = []
    profiler = ActorProfiler(rd / "profiles") if profile_actors else None
    for i in range(repeat):
        if not json_out:
            typer.echo(f"bench round {i + 1}/{repeat}", err=True)
        profiling = profiler if i == 0 else None  # the first trace-on run only
        with profiling.sampling() if profiling else contextlib.nullcontext():
            runs_on.append(end_to_end(sc, rd / f"trace-on-{i}", trace=True,
                                      progress=progress,
                                      hook=profiling.hook if profiling else None))
        if profiling:
            profiling.finish()
        runs_off.append(end_to_end(sc, rd / f"trace-off-{i}", trace=False,
                                   progress=progress))
        runs_nogro.append(end_to_end(sc_nogro, rd / f"gro-off-{i}", trace=True,
                                     progress=progress))
        raw1.append(run_hop_benchmark(DATA_HOPS, messages, batch=1))
        raw64.append(run_hop_benchmark(DATA_HOPS, messages * 4, batch=64))
        model.append(run_model_benchmark(sc.kernel_profile, model_segments))
    # A ratio is taken within one round (side by side), then the median of the ratios.
    result: dict[str, Any] = {
        "repeat": repeat, "profile": sc.profile, "mbytes_per_flow": mbytes,
        "flows": len(sc.flows),
        "integrity": all(r["integrity"] for r in runs_on + runs_off + runs_nogro),
        "segments": int(_median([r["segments"] for r in runs_on])),
        "segments_per_s": round(_median([r["segments_per_s"] for r in runs_on])),
        "segments_per_s_trace_off": round(_median([r["segments_per_s"] for r in runs_off])),
        "mbit_per_s": round(_median([r["mbit_per_s"] for r in runs_on]), 1),
        "segments_per_s_gro_off": round(_median([r["segments_per_s"] for r in runs_nogro])),
        "raw_unbatched_per_s": round(_median([u["messages_per_s"] for u in raw1])),
        "raw_batched_per_s": round(_median([b["messages_per_s"] for b in raw64])),
        "raw_per_hop_us": round(_median([u["per_hop_us"] for u in raw1]), 1),
        "ratio_unbatched": _ratio(runs_on, raw1, 4),
        "ratio_unbatched_trace_off": _ratio(runs_off, raw1, 4),
        "ratio_unbatched_gro_off": _ratio(runs_nogro, raw1, 4),
        "ratio_batched": _ratio(runs_on, raw64, 5),
        "model_segments_per_s": round(_median([m["in_order"] for m in model])),
        "model_ofo_segments_per_s": round(_median([m["ofo"] for m in model])),
        # The actors import the same modules, so this holds for them too.
        "compiled": is_compiled(),
        "cpu_us_per_segment": _cpu_per_segment(runs_on),
        # Of the trace-on figure, the actors' main threads (the rest: ZeroMQ I/O threads).
        "cpu_us_per_segment_main_thread": _cpu_per_segment(runs_on,
                                                           "main_thread_us_per_segment"),
        "cpu_us_per_segment_trace_off": _cpu_per_segment(runs_off),
        "cpu_us_per_segment_gro_off": _cpu_per_segment(runs_nogro),
        "trace_cost": _trace_cost(runs_on, runs_off),
        "startup_s": round(_median([r["startup_s"] for r in runs_on]), 3),
        "rss_kb": {k: round(v) for k, v in _median_map([r["rss_kb"] for r in runs_on]).items()},
        "hops": [{"hop": h, "mean_us": round(m, 1), "messages": n}
                 for h, m, n in runs_on[0]["hops"]],
    }
    if profiler is not None:
        result["profile_samples"] = {
            name: json.loads(meta.read_text()) for name in profiler.names
            if (meta := rd / "profiles" / f"{name}.cpu.json").exists()}
        for key, suffix in (("profiles", ".cpu.txt"), ("profiles_wall", ".txt")):
            result[key] = {name: [(f, round(own, 3), round(incl, 3)) for f, own, incl in
                                  top_functions(rd / "profiles" / f"{name}{suffix}")]
                           for name in profiler.names
                           if (rd / "profiles" / f"{name}{suffix}").exists()}
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "bench.json").write_text(json.dumps(result, indent=2))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print(result)
    if not result["integrity"]:
        raise typer.Exit(1)


def _print(r: dict[str, Any]) -> None:
    typer.echo(f"\n{r['flows']} flows x {r['mbytes_per_flow']:g} MB, profile {r['profile']}, "
               f"medians of {r['repeat']} runs; integrity "
               f"{'holds' if r['integrity'] else 'BROKEN'}\n")
    compiled = " (compiled)" if r["compiled"] else ""
    typer.echo(table([
        ("end to end, trace on", f"{r['segments_per_s']:,}", f"{r['ratio_unbatched']:.3f}"),
        ("end to end, trace off", f"{r['segments_per_s_trace_off']:,}",
         f"{r['ratio_unbatched_trace_off']:.3f}"),
        ("end to end, GRO off (trace on)", f"{r['segments_per_s_gro_off']:,}",
         f"{r['ratio_unbatched_gro_off']:.3f}"),
        ("raw chain, unbatched", f"{r['raw_unbatched_per_s']:,}", "1"),
        ("raw chain, batches of 64", f"{r['raw_batched_per_s']:,}", ""),
        (f"kernel model in-process, in order{compiled}", f"{r['model_segments_per_s']:,}",
         ""),
        ("kernel model in-process, 30% reordered/dup", f"{r['model_ofo_segments_per_s']:,}",
         "")], ("what", "segments/s", "of raw unbatched")))
    cpu, nogro = r["cpu_us_per_segment"], r.get("cpu_us_per_segment_gro_off") or {}
    off = r.get("cpu_us_per_segment_trace_off") or {}
    main = r.get("cpu_us_per_segment_main_thread") or {}
    typer.echo("\nCPU per emulated segment (µs):")
    rows = [(name, f"{us:.1f}", f"{us - main[name]:.1f}" if name in main else "",
             f"{off[name]:.1f}" if name in off else "",
             f"{nogro[name]:.1f}" if name in nogro else "",
             f"{r['rss_kb'][name] / 1024:.1f}" if name in r["rss_kb"] else "")
            for name, us in cpu.items()]
    typer.echo(table(rows, ("actor", "trace on", "of it I/O thread", "trace off",
                            "GRO off (trace on)", "max RSS MB")))
    tc = r.get("trace_cost")
    if tc:
        typer.echo(f"trace cost (each round's trace-on run against its trace-off run, "
                   f"median): {tc['cpu']:+.1%} CPU per segment, {tc['rate']:.1%} of the rate")
    typer.echo(f"\nstart-up (spawn to all ready): {r['startup_s']:.2f} s; "
               f"{r['mbit_per_s']} Mbit/s of payload")
    typer.echo(table([(h["hop"], f"{h['mean_us']:.1f}", str(h["messages"]))
                      for h in r["hops"]], ("hop (first run)", "mean one-way us", "messages")))
    for name, top in (r.get("profiles") or {}).items():
        meta = (r.get("profile_samples") or {}).get(name, {})
        typer.echo(f"\n{name}: hottest functions (main thread CPU time: "
                   f"{meta.get('samples', '?')} samples over {meta.get('cpu_ms', '?')} ms)")
        typer.echo(table([(f, f"{own:.1%}", f"{incl:.1%}") for f, own, incl in top],
                         ("function", "self", "with callees")))
