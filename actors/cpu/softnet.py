"""Per-CPU ``struct softnet_data`` counters and their ``/proc/net/softnet_stat`` line.

Columns (docs/receive-path.md §8): processed, dropped, time_squeeze, six zeros (was fastroute,
cpu_collision), received_rps, flow_limit_count; the modern kernel adds the backlog
length (input + process queue), the CPU index, input_qlen and process_qlen.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.profiles import Profile

LEGACY_COLUMNS = 11
MODERN_COLUMNS = 15


@dataclass(slots=True)
class SoftnetData:
    """The counters softnet_seq_show prints for one CPU."""

    cpu: int
    processed: int = 0  # skbs entering __netif_receive_skb_core
    dropped: int = 0  # enqueue_to_backlog drops (backlog full or flow limit)
    time_squeeze: int = 0  # net_rx_action runs cut by budget or time limit
    received_rps: int = 0  # RPS IPIs received
    flow_limit_count: int = 0
    input_qlen: int = 0  # backlog input_pkt_queue length (gauge)
    process_qlen: int = 0  # backlog process_queue length (gauge)

    def columns(self, profile: Profile) -> list[int]:
        return softnet_columns(self, profile.softnet_columns)

    def line(self, profile: Profile) -> str:
        return format_softnet_line(self.columns(profile))


def softnet_columns(sd: SoftnetData, ncolumns: int) -> list[int]:
    """The values of one softnet_stat line with ``ncolumns`` (11 legacy, 15 modern)."""
    if ncolumns not in (LEGACY_COLUMNS, MODERN_COLUMNS):
        raise ValueError(f"softnet_stat has 11 or 15 columns, not {ncolumns}")
    cols = [
        sd.processed,
        sd.dropped,
        sd.time_squeeze,
        0, 0, 0, 0, 0,  # was fastroute
        0,  # was cpu_collision
        sd.received_rps,
        sd.flow_limit_count,
    ]
    if ncolumns == MODERN_COLUMNS:
        cols += [sd.input_qlen + sd.process_qlen, sd.cpu, sd.input_qlen, sd.process_qlen]
    return cols


def format_softnet_line(columns: list[int]) -> str:
    """The kernel prints each column as ``%08x`` (an unsigned int, so it wraps at 2^32)."""
    return " ".join(f"{value & 0xFFFFFFFF:08x}" for value in columns)


def parse_softnet_line(line: str) -> list[int]:
    return [int(field, 16) for field in line.split()]
