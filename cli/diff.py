"""``rxpath diff RUN_A RUN_B``: two runs side by side, for the questions a comparison
answers (legacy against modern, tcp_low_latency 0 against 1, one seed against another).

Counters come in nstat's order with A, B and B - A in aligned columns; then drops by
reason, the NIC and softnet_stat, each socket's queues and window, and each flow's verdict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.mib import ALL_NAMES
from cli import formats
from cli.app import app, paint
from cli.options import LATEST_RUN, RunDirArgument
from cli.stat import load_summary

# The socket fields worth comparing, under the names ss -tmi prints (label, summary key).
SOCKET_FIELDS = (("State", "state"), ("Recv-Q", "recv_q"), ("Send-Q", "send_q"),
                 ("rcvmss", "rcv_mss"), ("bytes_received", "bytes_received"),
                 ("segs_in", "segs_in"), ("data_segs_in", "data_segs_in"),
                 ("rcv_space", "rcv_space"), ("rcv_ssthresh", "rcv_ssthresh"),
                 ("rcv_wnd", "rcv_wnd"))
SKMEM_FIELDS = ("r", "rb", "t", "tb", "f", "w", "o", "bl", "d")  # all nine, as ss prints


def _num(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def delta_text(a: Any, b: Any) -> str:
    """B - A with its sign, "" when equal or not both numbers."""
    x, y = _num(a), _num(b)
    if x is None or y is None:
        return "" if a == b else "changed"
    d = y - x
    if d == 0:
        return ""
    text = f"{d:+g}" if isinstance(d, float) else f"{d:+d}"
    if x:
        text += f" ({100 * d / x:+.0f}%)"
    return text


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def columns(rows: Iterable[tuple[str, Any, Any]], header: tuple[str, str, str, str]
            ) -> list[str]:
    """name, A, B, delta: names left-aligned, values right-aligned, as nstat prints."""
    table = [header] + [(name, _cell(a), _cell(b), delta_text(a, b)) for name, a, b in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    out = []
    for r in table:
        out.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  "
                   f"{r[3]}".rstrip())
    return out


def _ordered(names: Iterable[str]) -> list[str]:
    known = {n: i for i, n in enumerate(ALL_NAMES)}
    return sorted(set(names) - formats.NSTAT_HIDDEN,
                  key=lambda n: (known.get(n, len(known)), n))


def counter_rows(a: Mapping[str, Any], b: Mapping[str, Any], *, zeros: bool = False,
                 changed_only: bool = False, order: bool = True) -> list[tuple[str, Any, Any]]:
    names = _ordered([*a, *b]) if order else list(dict.fromkeys([*a, *b]))
    rows = []
    for n in names:
        x, y = a.get(n, 0), b.get(n, 0)
        if not zeros and not x and not y:
            continue
        if changed_only and x == y:
            continue
        rows.append((n, x, y))
    return rows


def _socket_key(sk: Mapping[str, Any]) -> str:
    return str(sk.get("peer") or sk.get("local") or "?")


def socket_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]
                ) -> list[tuple[str, list[tuple[str, Any, Any]]]]:
    """Per socket (matched by peer address:port), its fields in A and B."""
    by_a = {_socket_key(s): s for s in a}
    by_b = {_socket_key(s): s for s in b}
    out = []
    for key in dict.fromkeys([*by_a, *by_b]):
        sa, sb = by_a.get(key, {}), by_b.get(key, {})
        rows: list[tuple[str, Any, Any]] = [(label, sa.get(k), sb.get(k))
                                            for label, k in SOCKET_FIELDS]
        ma, mb = sa.get("skmem") or {}, sb.get("skmem") or {}
        rows += [(f"skmem:{f}", ma.get(f), mb.get(f)) for f in SKMEM_FIELDS]
        out.append((key, rows))
    return out


def verdict_rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    fa = {f["flow"]: f for f in a.get("flows", [])}
    fb = {f["flow"]: f for f in b.get("flows", [])}
    rows: list[tuple[str, Any, Any]] = []
    for name in dict.fromkeys([*fa, *fb]):
        x, y = fa.get(name, {}), fb.get(name, {})
        rows.append((f"{name} received", x.get("received"), y.get("received")))
        rows.append((f"{name} verdict", _verdict(x), _verdict(y)))
    rows.append(("integrity", _holds(a.get("integrity")), _holds(b.get("integrity"))))
    checker_a, checker_b = a.get("checker") or {}, b.get("checker") or {}
    if checker_a or checker_b:
        rows.append(("checker", _pass(checker_a), _pass(checker_b)))
    rows.append(("stopped", a.get("reason"), b.get("reason")))
    rows.append(("elapsed_s", a.get("elapsed_s"), b.get("elapsed_s")))
    return rows


def _verdict(f: Mapping[str, Any]) -> str | None:
    return None if not f else ("intact" if f.get("intact") else "BROKEN")


def _holds(v: Any) -> str | None:
    return None if v is None else ("holds" if v else "BROKEN")


def _pass(c: Mapping[str, Any]) -> str | None:
    return None if not c else ("PASS" if c.get("ok") else "FAIL")


def _scenario_line(run_dir: Path, s: dict[str, Any]) -> str:
    desc = ""
    path = run_dir / "scenario.json"
    if path.is_file():
        try:
            desc = json.loads(path.read_text()).get("description") or ""
        except (OSError, ValueError):
            desc = ""
    return (f"{run_dir}: profile {s.get('profile')}, seed {s.get('seed')}"
            + (f": {desc}" if desc else ""))


def render_diff(run_a: Path, a: dict[str, Any], run_b: Path, b: dict[str, Any], *,
                all_counters: bool = False, changed_only: bool = False) -> str:
    lines = [f"A  {_scenario_line(run_a, a)}", f"B  {_scenario_line(run_b, b)}"]
    head = ("counter", "A", "B", "delta")
    lines += ["", "#kernel counters (nstat)"]
    lines += columns(counter_rows(a.get("nstat", {}), b.get("nstat", {}), zeros=all_counters,
                                  changed_only=changed_only), head)
    drops = counter_rows(a.get("drops", {}), b.get("drops", {}), changed_only=changed_only,
                         order=False)
    if drops:
        lines += ["", "#drops (SKB_DROP_REASON_*)"]
        lines += columns([(f"SKB_DROP_REASON_{r}", x, y) for r, x, y in sorted(drops)],
                         ("reason", "A", "B", "delta"))
    nic = counter_rows(a.get("nic", {}), b.get("nic", {}), zeros=all_counters,
                       changed_only=changed_only, order=False)
    if nic:
        lines += ["", "#NIC statistics (ethtool -S)"]
        lines += columns(nic, ("statistic", "A", "B", "delta"))
    soft_a, soft_b = a.get("softnet_stat", {}), b.get("softnet_stat", {})
    soft: list[tuple[str, Any, Any]] = []
    # softnet_stat's first three columns, under the kernel's names.
    for cpu in dict.fromkeys([*soft_a, *soft_b]):
        ca, cb = list(soft_a.get(cpu) or []), list(soft_b.get(cpu) or [])
        for i, name in enumerate(formats.SOFTNET_COLUMNS[:3]):
            x = int(ca[i]) if i < len(ca) else None
            y = int(cb[i]) if i < len(cb) else None
            if (all_counters or x or y) and not (changed_only and x == y):
                soft.append((f"{cpu} {name}", x, y))
    if soft:
        lines += ["", "#/proc/net/softnet_stat"]
        lines += columns(soft, ("cpu", "A", "B", "delta"))
    for key, rows in socket_rows(a.get("sockets", []), b.get("sockets", [])):
        if changed_only:
            rows = [r for r in rows if r[1] != r[2]]
        if rows:
            lines += ["", f"#socket {key} (ss -tmi)"]
            lines += columns(rows, ("field", "A", "B", "delta"))
    lines += ["", "#flows and verdicts"]
    lines += columns(verdict_rows(a, b), ("flow", "A", "B", "delta"))
    return "\n".join(lines)


@app.command()
def diff(
    run_a: Annotated[Path, typer.Argument(metavar="RUN_A", help="The first run directory.")],
    run_b: RunDirArgument = LATEST_RUN,
    all_counters: Annotated[bool, typer.Option(
        "-z", "--zeros", "-a", "--all", help="Counters that are zero in both runs too "
        "(nstat's -z; -a/--all is kept as another name).")] = False,
    changed: Annotated[bool, typer.Option(
        "--changed", help="Only what differs between the two runs.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print {name: [A, B]} per section as JSON.")] = False,
) -> None:
    """Compare two runs: counters side by side with their deltas, sockets and verdicts.

    RUN_B defaults to the newest run (runs/latest). Deltas are B - A, with the change
    in percent of A.
    """
    if not run_a.is_dir():
        typer.echo(f"rxpath diff: {run_a}: no such run directory", err=True)
        raise typer.Exit(2)
    a, b = load_summary(run_a), load_summary(run_b)
    if json_out:
        out = {
            "a": str(run_a), "b": str(run_b),
            "nstat": {n: [x, y] for n, x, y in counter_rows(
                a.get("nstat", {}), b.get("nstat", {}), zeros=all_counters,
                changed_only=changed)},
            "drops": {n: [x, y] for n, x, y in counter_rows(
                a.get("drops", {}), b.get("drops", {}), changed_only=changed, order=False)},
            "nic": {n: [x, y] for n, x, y in counter_rows(
                a.get("nic", {}), b.get("nic", {}), zeros=all_counters, changed_only=changed,
                order=False)},
            "sockets": {k: {n: [x, y] for n, x, y in rows}
                        for k, rows in socket_rows(a.get("sockets", []),
                                                   b.get("sockets", []))},
            "flows": {n: [x, y] for n, x, y in verdict_rows(a, b)},
        }
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(paint(render_diff(run_a, a, run_b, b, all_counters=all_counters,
                                 changed_only=changed)))
