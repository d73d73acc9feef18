"""``rxpath chaos``: run a scenario while killing, stopping and resuming its actors.

::

    rxpath chaos [CONFIG] --kill cpu,reader --every 2s --seed 7

Faults come from ``--kill``/``--every`` (one seeded random moment in each period, a
seeded random actor of the named roles) and from the config's ``[chaos]`` table
(``kill``, ``every_ms``, ``seed`` and a ``[[chaos.schedule]]`` of ``{at_ms, action,
target}``). The supervisor restarts what dies (:mod:`actors.runtime.supervisor`); the
run ends with what was done and the checker's verdict, the run's one verdict (as
``rxpath run``: exit 0 PASS, 1 FAIL, 4 INCOMPLETE). A stopped actor is always continued
before the run stops.
"""

from __future__ import annotations

import json
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.launcher import ActorStartError, Launcher
from actors.runtime.supervisor import RestartPolicy, Supervisor
from actors.scenario import CHAOS_ROLES, ChaosConfig, ChaosEventConfig, Scenario
from cli import formats
from cli.app import app
from cli.options import (
    DurationOption,
    ProfileOption,
    SeedOption,
    SetOption,
    SysctlOption,
    load_or_exit,
    make_overrides,
)
from cli.run import build_topology, default_run_dir, exit_status, run_scenario
from protocol import messages as msg

STOP_HOLD_S = 1.0      # a random `stop` is continued this long after
LINK_FAULT_S = 1.0     # a cut or delayed link heals this long after


@dataclass(frozen=True)
class ChaosAction:
    at_s: float
    action: str        # kill | stop | cont | cut_link | delay_link | heal_link
    target: str        # an actor name (resolved), or "a->b" for a link
    delay_ms: float = 0.0  # delay_link: the added delay


@dataclass
class ChaosRunner:
    """The run loop's chaos hook: performs each action once its moment has come."""

    plan: list[ChaosAction]
    done: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, launcher: Launcher, supervisor: Supervisor, t: float) -> None:
        while self.plan and self.plan[0].at_s <= t:
            a = self.plan.pop(0)
            self.done.append(self.perform(launcher, supervisor, a, t))

    def perform(self, launcher: Launcher, supervisor: Supervisor, a: ChaosAction,
                t: float) -> dict[str, Any]:
        """Do ``a`` now (``t``: seconds since traffic started) and say what was done."""
        entry: dict[str, Any] = {"at_s": round(t, 3), "action": a.action, "target": a.target}
        if a.action in ("cut_link", "delay_link", "heal_link"):
            src, _, dst = a.target.partition("->")
            if src not in launcher.names or dst not in launcher.names:
                entry["result"] = "no such link: skipped"
            else:
                mode = {"cut_link": "cut", "delay_link": "delay", "heal_link": "heal"}[a.action]
                launcher.send(src, msg.LINK_FAULT, {"dest": dst, "mode": mode,
                                                    "delay_ns": int(a.delay_ms * 1e6)})
                entry["result"] = mode + (f" {a.delay_ms:g} ms" if mode == "delay" else "")
        elif a.target not in launcher.names:
            entry["result"] = "no such actor: skipped"
        elif not launcher.process(a.target).running:
            proc = launcher.process(a.target)
            policy = supervisor.policy.policy(proc.role)
            entry["result"] = ("dead, not restarted (policy never): skipped"
                               if policy == "never" or not supervisor.policy.wants_restart(
                                   proc.role, proc.returncode or 0)
                               else "not running (restart pending): skipped")
        elif a.action == "kill":
            entry["pid"] = launcher.pid(a.target)
            launcher.kill(a.target, signal.SIGKILL, timeout_s=None)
            entry["result"] = "SIGKILL"
        elif a.action == "stop":
            supervisor.stop_actor(a.target)
            entry["result"] = "SIGSTOP"
        else:
            supervisor.cont_actor(a.target)
            entry["result"] = "SIGCONT"
        launcher.log.warning("chaos", **entry)
        return entry


def plan_chaos(sc: Scenario, names: Sequence[str], roles: dict[str, str],
               cfg: ChaosConfig, *, horizon_s: float) -> list[ChaosAction]:
    """Every action of the run, in time order, from the seed and the schedule."""
    rng = random.Random(cfg.seed if cfg.seed is not None else sc.seed_for("chaos"))
    plan: list[ChaosAction] = []

    def pick(role_or_name: str) -> str:
        if role_or_name in names:
            return role_or_name
        members = [n for n in names if roles[n] == role_or_name]
        return rng.choice(members) if members else role_or_name

    if cfg.kill and cfg.every_ms > 0:
        every = cfg.every_ms / 1000
        k = 0
        while (k + 1) * every <= horizon_s:
            at = k * every + rng.uniform(0.2, 0.8) * every
            plan.append(ChaosAction(at, "kill", pick(rng.choice(cfg.kill))))
            k += 1
    for e in cfg.schedule:
        target = e.target if "->" in e.target else pick(e.target)
        plan.append(ChaosAction(e.at_ms / 1000, e.action, target, e.delay_ms))
        if e.action in ("cut_link", "delay_link"):
            # A link fault lasts LINK_FAULT_S, then the link heals and releases what it held.
            plan.append(ChaosAction(e.at_ms / 1000 + LINK_FAULT_S, "heal_link", target))
        if e.action == "stop" and not any(
                x.action == "cont" and x.target == e.target for x in cfg.schedule):
            plan.append(ChaosAction(e.at_ms / 1000 + STOP_HOLD_S, "cont", target))
    plan.sort(key=lambda a: a.at_s)
    return plan


def parse_every(text: str) -> float:
    """``2s``, ``500ms`` or a plain number of seconds -> milliseconds."""
    t = text.strip().lower()
    try:
        if t.endswith("ms"):
            return float(t[:-2])
        if t.endswith("s"):
            return float(t[:-1]) * 1000
        return float(t) * 1000
    except ValueError:
        raise typer.BadParameter(f"expected a duration like 2s or 500ms, got {text!r}") \
            from None


def chaos_config(sc: Scenario, kill: str | None, every: str | None,
                 seed: int | None) -> ChaosConfig:
    cfg = sc.chaos
    roles = tuple(r for r in (kill or "").split(",") if r) or cfg.kill
    for r in roles:
        if r not in CHAOS_ROLES:
            raise typer.BadParameter(f"--kill: {r!r} is not one of {', '.join(CHAOS_ROLES)}")
    every_ms = parse_every(every) if every else (cfg.every_ms or (2000.0 if roles else 0.0))
    return ChaosConfig(kill=roles, every_ms=every_ms,
                       seed=seed if seed is not None else cfg.seed,
                       schedule=cfg.schedule)


def run_chaos(sc: Scenario, cfg: ChaosConfig, run_dir: Path, *, progress: bool = False,
              horizon_s: float | None = None,
              policy: RestartPolicy | None = None) -> dict[str, Any]:
    """Run ``sc`` with ``cfg``'s faults; the summary gains ``chaos`` (what was done)."""
    topo = build_topology(sc)
    names = list(topo["actors"])
    roles = {n: str(e["role"]) for n, e in topo["actors"].items()}
    plan = plan_chaos(sc, names, roles, cfg, horizon_s=horizon_s or sc.duration)
    runner = ChaosRunner(list(plan))
    summary = run_scenario(sc, run_dir, progress=progress, chaos=runner, policy=policy)
    summary["chaos"] = {"planned": [vars(a) for a in plan], "done": runner.done}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


@app.command()
def chaos(
    config: Annotated[Path | None, typer.Argument(
        help="Scenario TOML file (default: the embedded default topology).")] = None,
    kill: Annotated[str | None, typer.Option(
        "--kill", help="Roles to SIGKILL, comma separated: peer,nic,cpu,stack,reader.")]
        = None,
    every: Annotated[str | None, typer.Option(
        "--every", help="One kill per period, at a seeded random moment (2s, 500ms).")]
        = None,
    seed: SeedOption = None,
    profile: ProfileOption = None,
    duration: DurationOption = None,
    sysctl: SysctlOption = None,
    sets: SetOption = None,
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="Where to write logs, deliveries and counters.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
        = False,
    restart_hung: Annotated[str | None, typer.Option(
        "--restart-hung-after", help="SIGKILL and restart (by its role's policy) an actor "
        "silent this long, e.g. a SIGSTOPped one (3s, 500ms); default: only report it.")]
        = None,
) -> None:
    """Run a scenario while killing/stopping actors; the checker's verdict is the run's.

    Exit status: 0 PASS; 1 FAIL (a byte or a frame went wrong); 4 INCOMPLETE (stopped,
    e.g. by --duration, before every flow ended, with nothing wrong so far); 2 a bad
    config."""
    sc = load_or_exit(config, make_overrides(profile, seed, duration, sysctl, sets))
    cfg = chaos_config(sc, kill, every, seed)
    policy = None
    if restart_hung is not None:
        watchdog_s = parse_every(restart_hung) / 1000
        base = RestartPolicy()
        policy = RestartPolicy(restart_hung_after_s=watchdog_s,
                               hang_after_s=min(base.hang_after_s, watchdog_s))
    rd = run_dir or default_run_dir()
    # Kills only while data flows: a rough horizon of the transfer at ~2 MB/s.
    horizon = min(sc.duration, max(2.0, sum(f.bytes for f in sc.flows) / 2e6))
    try:
        summary = run_chaos(sc, cfg, rd, progress=not json_out and sys.stderr.isatty(),
                            horizon_s=horizon, policy=policy)
    except ActorStartError as err:
        typer.echo(f"rxpath chaos: {err}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        for d in summary["chaos"]["done"]:
            typer.echo(f"chaos {d['at_s']:7.3f} s  {d['action']:<10} {d['target']:<8} "
                       f"{d['result']}")
        sup = summary["supervision"]
        for e in sup["events"]:
            extra = {k: v for k, v in e.items() if k not in ("t", "event", "actor")}
            typer.echo(f"supervisor: {e['event']} {e['actor']} {extra}")
        typer.echo(f"stopped: {formats.stopped_after(summary)}; "
                   f"{sup['restarts']} restarts, {sup['hangs']} hangs noticed")
        typer.echo(summary["checker_text"])
    raise typer.Exit(exit_status(summary))


__all__ = ["ChaosAction", "ChaosEventConfig", "ChaosRunner", "chaos_config", "plan_chaos",
           "run_chaos"]
