"""What the TUN device gives the nic and what it may be given, decided on a frame's bytes
alone: the tunwire shell calls these, and the tests feed them anything. Neither raises.

- Read from the device (what the namespace's kernel transmits): an IPv4 TCP packet goes
  to the nic, as the peer's frames do; anything else (IPv6 neighbour discovery, ICMP) is
  ignored. Whether the packet is sound is for ``ip_rcv`` and ``tcp_v4_rcv`` downstream
  (the cpu and stack actors), which count what is not, as Linux does.
- Written to the device (the nic's wire: the stack's segments): the TUN driver takes
  nearly anything whose first nibble is 4 or 6, and the namespace's ``ip_rcv`` would drop
  a broken one where the run cannot see it. So a frame goes in only if it is an IPv4
  packet whose header holds together (version, header length, total length equal to the
  frame's, as every frame the stack builds has); any other is counted by the tunwire
  (``bad_frames``) and not written. Checksums stay the namespace kernel's to verify.
"""

from __future__ import annotations

IPV4_MIN_HEADER = 20
IPPROTO_TCP = 6


def frame_for_nic(frame: bytes) -> bool:
    """Is a frame read from the TUN device an IPv4 TCP packet, for the nic?"""
    return len(frame) >= IPV4_MIN_HEADER and frame[0] >> 4 == 4 and frame[9] == IPPROTO_TCP


def frame_problem(frame: bytes) -> str | None:
    """Why ``frame`` is not an IPv4 packet to write into the TUN device (None: it is)."""
    n = len(frame)
    if n < IPV4_MIN_HEADER:
        return f"{n} bytes: shorter than an IPv4 header"
    version, ihl = frame[0] >> 4, (frame[0] & 0xF) * 4
    if version != 4:
        return f"IP version {version}"
    total = frame[2] << 8 | frame[3]
    if ihl < IPV4_MIN_HEADER or ihl > n:
        return f"header length {ihl} in a {n}-byte frame"
    if total != n:
        return f"total length {total} in a {n}-byte frame"
    return None
