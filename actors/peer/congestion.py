"""The sender's congestion control: Reno, counted in packets as Linux counts ``snd_cwnd``.

Slow start adds one packet per packet acked up to ``ssthresh``; congestion avoidance adds
one packet per ``cwnd`` packets acked (``tcp_reno_cong_avoid``). A loss halves the window
(``tcp_reno_ssthresh``); a timeout restarts from one packet. When to call which is the
sender's congestion state machine (``tcp_fastretrans_alert``); this module only holds the
window arithmetic.
"""

from __future__ import annotations

from enum import IntEnum

from protocol.constants import TCP_INIT_CWND

TCP_INFINITE_SSTHRESH = 0x7FFFFFFF


class CaState(IntEnum):
    """``icsk_ca_state``: the congestion-control state machine of ``tcp_fastretrans_alert``."""

    OPEN = 0
    DISORDER = 1
    CWR = 2
    RECOVERY = 3
    LOSS = 4


class Reno:
    """``snd_cwnd``, ``snd_cwnd_cnt`` and ``snd_ssthresh`` (in packets)."""

    __slots__ = ("cwnd", "cwnd_cnt", "ssthresh")

    def __init__(self, initial_cwnd: int = TCP_INIT_CWND) -> None:
        self.cwnd = initial_cwnd
        self.cwnd_cnt = 0
        self.ssthresh = TCP_INFINITE_SSTHRESH

    def cong_avoid(self, acked: int, prior_in_flight: int, cwnd_limited: bool) -> None:
        """Reno ``tcp_reno_cong_avoid`` in packets: slow start, then +1 per cwnd acked.

        The window grows only while it limits sending (``tcp_is_cwnd_limited``).
        """
        if not (cwnd_limited or prior_in_flight >= self.cwnd):
            return
        if self.cwnd < self.ssthresh:
            grown = min(self.cwnd + acked, self.ssthresh)
            acked -= grown - self.cwnd
            self.cwnd = grown
            if acked <= 0:
                return
        self.cwnd_cnt += acked
        if self.cwnd_cnt >= self.cwnd:
            delta = self.cwnd_cnt // self.cwnd
            self.cwnd_cnt -= delta * self.cwnd
            self.cwnd += delta

    def reno_ssthresh(self) -> int:
        return max(self.cwnd >> 1, 2)

    def enter_recovery(self) -> None:
        """Fast retransmit: halve the window and continue from there."""
        self.ssthresh = self.reno_ssthresh()
        self.cwnd = self.ssthresh
        self.cwnd_cnt = 0

    def end_recovery(self) -> None:
        """``tcp_end_cwnd_reduction``: the reduced window is what recovery leaves behind."""
        self.cwnd = self.ssthresh
        self.cwnd_cnt = 0

    def enter_loss(self, new_episode: bool) -> None:
        """``tcp_enter_loss``: one packet, slow start again; only a fresh loss episode
        halves ``ssthresh`` (a timeout in recovery or loss keeps the one already set)."""
        if new_episode:
            self.ssthresh = self.reno_ssthresh()
        self.cwnd = 1
        self.cwnd_cnt = 0
