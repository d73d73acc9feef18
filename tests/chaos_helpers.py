"""What the chaos and kill-matrix tests ask of a run's summary and its processes."""

from __future__ import annotations

from typing import Any

from actors.runtime import procutil


def alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still running (zombies count as gone)."""
    return [p for p in pids if procutil.pid_alive(p)]


def died(summary: dict[str, Any], actor: str) -> bool:
    return any(d["actor"] == actor for d in summary["supervision"]["deaths"])


def assert_reader_death_accounted(summary: dict[str, Any], reader: str, flow: str) -> None:
    """``reader`` died and the run still completed: every byte of ``flow`` was delivered,
    or delivered and then lost with the reader, and the checker passed."""
    assert died(summary, reader) and summary["reason"] == "complete", summary["checker_text"]
    f = next(f for f in summary["checker"]["flows"] if f["flow"] == flow)
    assert f["delivered"] + f["delivered_then_lost"] == f["expected"]
    assert summary["checker"]["ok"], summary["checker_text"]
