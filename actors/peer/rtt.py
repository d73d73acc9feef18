"""The sender's RTT estimator and retransmission timeout (RFC 6298, ``tcp_rtt_estimator``
and ``tcp_set_rto``).

Samples come from the sender (Karn's rule and the timestamp echo are its business);
this module keeps ``srtt``, ``rttvar``, the RTO and its exponential back-off.
"""

from __future__ import annotations

from actors.profiles import MS

TCP_TIMEOUT_FALLBACK = 3_000 * MS  # RTO after a retransmitted SYN with no RTT sample
RTT_GRANULARITY = 1 * MS  # G in RFC 6298: the timestamp clock ticks in milliseconds


class RttEstimator:
    """``srtt``/``rttvar`` in ns, the current ``rto`` and its back-off count."""

    __slots__ = ("backoff", "rto", "rto_max", "rto_min", "rttvar", "sampled", "srtt")

    def __init__(self, rto_initial: int, rto_min: int, rto_max: int) -> None:
        self.srtt = 0
        self.rttvar = 0
        self.rto = rto_initial
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.backoff = 0
        self.sampled = False  # a valid sample has been taken

    def sample(self, rtt: int) -> None:
        """RFC 6298 (2.2)/(2.3); a valid sample also ends the RTO back-off (tcp_set_rto)."""
        rtt = max(rtt, 1)
        if not self.sampled:
            self.srtt = rtt
            self.rttvar = rtt // 2
            self.sampled = True
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - rtt)) // 4
            self.srtt = (7 * self.srtt + rtt) // 8
        rto = self.srtt + max(RTT_GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, self.rto_min), self.rto_max)
        self.backoff = 0

    def back_off(self) -> None:
        """A retransmission timeout: double the RTO (RFC 6298 (5.5)), up to the maximum."""
        self.backoff += 1
        self.rto = min(self.rto << 1, self.rto_max)

    def established_without_sample(self, syn_retransmitted: bool, rto_initial: int) -> None:
        """The handshake gave no valid sample: the initial RTO, or the 3 s fallback after a
        retransmitted SYN (RFC 6298 (5.7))."""
        rto = TCP_TIMEOUT_FALLBACK if syn_retransmitted else rto_initial
        self.rto = min(max(rto, self.rto_min), self.rto_max)

    def probe_interval(self, probe_backoff: int) -> int:
        """``tcp_probe0_when``: ``max(rto, RTO_MIN) << backoff``, capped at RTO_MAX."""
        base = max(self.rto, self.rto_min)
        return min(base << min(probe_backoff, 30), self.rto_max)
