"""Configured per-segment / per-byte costs: time an actor spends as a slower machine would."""

from __future__ import annotations

import time


def spend(ns: int) -> None:
    """Burn ``ns`` of CPU in this process (a cost is work, not sleep)."""
    if ns <= 0:
        return
    end = time.monotonic_ns() + ns
    while time.monotonic_ns() < end:
        pass


def cost_ns(per_item_us: float, per_byte_ns: float, nbytes: int) -> int:
    return int(per_item_us * 1000 + per_byte_ns * nbytes)
