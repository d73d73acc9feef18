"""The socket buffer as the receive path sees it."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import SEQ_MASK, seq_add

# Sizes that make truesize realistic for an Ethernet NIC on x86_64: the driver
# hands up skbs built around a 2 KiB half-page buffer, and truesize adds the
# sk_buff itself. Kept here so every memory figure derives from one place.
SKB_STRUCT_SIZE = 256  # SKB_DATA_ALIGN(sizeof(struct sk_buff))
SKB_SHINFO_SIZE = 320  # SKB_DATA_ALIGN(sizeof(struct skb_shared_info))
MAX_TCP_HEADER = 320  # headroom the stack reserves for TCP/IP/link headers
RX_BUFFER_SIZE = 2048  # driver receive buffer (half a 4 KiB page)
MAX_SKB_FRAGS = 17
# TCP_SKB_MIN_TRUESIZE: the smallest skb a TCP socket is charged for; SOCK_MIN_RCVBUF is
# that much (sock.h), the floor under SO_RCVBUF and window_clamp.
TCP_SKB_MIN_TRUESIZE = RX_BUFFER_SIZE + SKB_STRUCT_SIZE
SOCK_MIN_RCVBUF = TCP_SKB_MIN_TRUESIZE
RMEM_MAX = 212992  # SK_RMEM_MAX: net.core.rmem_max before v6.18 (see Sysctls.rmem_max)


def so_rcvbuf(value: int, rmem_max: int = RMEM_MAX) -> int:
    """sk_rcvbuf after setsockopt(SO_RCVBUF, value): clamped to net.core.rmem_max,
    doubled for overhead (__sock_set_rcvbuf)."""
    return max(min(value, rmem_max) * 2, SOCK_MIN_RCVBUF)
SKB_MAX_ORDER0 = 4096 - SKB_SHINFO_SIZE  # SKB_MAX_ORDER(0, 0): a one-page skb's data (tcp_collapse)
NET_IP_ALIGN_AND_HEADERS = 14 + 20  # Ethernet + IPv4 headers in the receive buffer


def skb_data_align(n: int) -> int:
    return (n + 63) & ~63


def skb_truesize(n: int) -> int:
    """SKB_TRUESIZE(n): the memory an skb with an n-byte linear area costs."""
    return skb_data_align(n) + SKB_SHINFO_SIZE + SKB_STRUCT_SIZE


def rx_truesize(frame_len: int) -> int:
    """truesize of a received frame: whole 2 KiB buffers plus the sk_buff."""
    buffers = max(1, -(-frame_len // RX_BUFFER_SIZE))
    return buffers * RX_BUFFER_SIZE + SKB_STRUCT_SIZE


PAGE_SIZE = 4096
NET_SKB_PAD = 64  # tun's headroom (tun->align)
ETH_HLEN = 14

# What hands received packets to the stack, which decides the skb's memory layout:
# "nic" an Ethernet NIC's RX ring (2 KiB page-half buffers), "tun" a tun device
# (tun_get_user builds an skb around each written IP packet: packetdrill's way in).
DeviceKind = Literal["nic", "tun"]
DEVICE_KINDS: tuple[str, ...] = typing.get_args(DeviceKind)


def _kmalloc_size(n: int) -> int:
    """kmalloc_size_roundup: the slab object a request of n bytes gets."""
    for size in (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192):
        if n <= size:
            return size
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def skb_head_object(n: int, small_head_cache: int = 0) -> int:
    """The memory __alloc_skb's kmalloc_reserve gives a linear area of n bytes:
    SKB_HEAD_ALIGN(n) (the data plus the shared info), taken from skb_small_head_cache
    at exactly that cache's object size when it fits (6.3+; ``small_head_cache`` is
    SKB_SMALL_HEAD_CACHE_SIZE, 0 where there is no such cache), else rounded up to a
    kmalloc slab (kmalloc_size_roundup). The area's end is moved to the object's end,
    so the object's slack is tailroom and counts in truesize."""
    obj = skb_data_align(n) + SKB_SHINFO_SIZE
    if obj <= small_head_cache:
        return small_head_cache
    return _kmalloc_size(obj)


def tun_skb(ip_len: int, small_head_cache: int = 0) -> tuple[int, bool]:
    """(truesize, head_frag) of the skb tun_get_user builds for a written IP packet.

    tun_alloc_skb keeps a packet that fits in a page (with its NET_SKB_PAD headroom)
    in a linear area (see :func:`skb_head_object`): truesize is that object plus the
    sk_buff, and the area cannot be stolen by skb_try_coalesce. A bigger (GSO) packet
    goes into page fragments: the model charges whole pages for the headroom, shared
    info and packet, plus the sk_buff; such an skb coalesces like a NIC's.
    """
    if NET_SKB_PAD + ip_len < PAGE_SIZE:
        head = skb_head_object(NET_SKB_PAD + ip_len, small_head_cache)
        return head + SKB_STRUCT_SIZE, False
    pages = -(-(NET_SKB_PAD + SKB_SHINFO_SIZE + ip_len) // PAGE_SIZE)
    return pages * PAGE_SIZE + SKB_STRUCT_SIZE, True


def device_skb(device: DeviceKind, ip_len: int, small_head_cache: int = 0) -> tuple[int, bool]:
    """(truesize, head_frag) of the skb ``device`` builds for an IP packet of ``ip_len``
    bytes: a NIC ring's buffers hold the Ethernet frame in page memory.
    ``small_head_cache``: the kernel's SKB_SMALL_HEAD_CACHE_SIZE (0: none)."""
    if device == "tun":
        return tun_skb(ip_len, small_head_cache)
    return rx_truesize(ETH_HLEN + ip_len), True


def device_skb_room(device: DeviceKind, ip_len: int,
                    small_head_cache: int = 0) -> tuple[int, int]:
    """(nr_frags, tailroom) of the skb ``device`` builds for an IP packet of ``ip_len``
    bytes: what skb_try_coalesce can still put into it.

    A NIC's frame that fits one 2 KiB buffer is a linear skb around it (build_skb):
    NET_SKB_PAD of headroom, the frame, then free room up to the shared info; a bigger
    frame spills into further buffers as page fragments. tun's linear head has the
    head object's slack past the packet (:func:`skb_head_object`: a small head from
    skb_small_head_cache has little); its paged skb keeps the payload in fragments.
    """
    if device == "tun":
        if NET_SKB_PAD + ip_len < PAGE_SIZE:
            obj = skb_head_object(NET_SKB_PAD + ip_len, small_head_cache)
            return 0, obj - SKB_SHINFO_SIZE - NET_SKB_PAD - ip_len
        return 1, 0
    frame_len = ETH_HLEN + ip_len
    buffers = max(1, -(-frame_len // RX_BUFFER_SIZE))
    if buffers > 1:
        return buffers - 1, 0
    return 0, max(0, RX_BUFFER_SIZE - SKB_SHINFO_SIZE - NET_SKB_PAD - frame_len)


def gro_skb(header_len: int, payload_len: int, gso_size: int) -> tuple[int, int]:
    """(truesize, nr_frags) of the skb NAPI GRO built from a NIC's frames of ``gso_size``
    payload each (skb_gro_receive): the first frame's buffer is the head; each next
    frame's buffer becomes a page fragment, charged all but its freed struct sk_buff,
    until MAX_SKB_FRAGS; later ones are chained on the frag_list at their full truesize.
    A frag_list skb never coalesces (skb_try_coalesce refuses it), which nr_frags at
    MAX_SKB_FRAGS gives here too."""
    rest = max(1, -(-payload_len // gso_size)) - 1  # the frames after the head
    hdr = NET_IP_ALIGN_AND_HEADERS + header_len  # Ethernet + IPv4 + TCP
    truesize = rx_truesize(hdr + min(payload_len, gso_size))
    if rest == 0:
        return truesize, 0
    # Every frame but the last is a full gso_size one: sum them without a loop.
    last = rx_truesize(hdr + payload_len - rest * gso_size)
    frags = min(rest, MAX_SKB_FRAGS)
    truesize += (rest - 1) * rx_truesize(hdr + gso_size) + last - frags * SKB_STRUCT_SIZE
    return truesize, frags


def skb_try_coalesce(to: Skb, frm: Skb) -> int | None:
    """Put ``frm``'s payload after ``to``'s (skb_try_coalesce); the truesize ``to``
    grows by (to charge), or None when it cannot take it. The caller merges the
    sequence fields and frees ``frm``.

    A payload that fits ``to``'s tailroom is copied there at no cost (so a run of small
    segments shares one buffer). Else ``frm``'s head buffer becomes one more page
    fragment of ``to`` (only if it is page memory, and while fewer than MAX_SKB_FRAGS
    would be in use), and ``to`` is charged all of ``frm`` but its freed struct sk_buff.
    """
    n = len(frm.data)
    if n <= to.tailroom:
        to.tailroom -= n
        return 0
    if to.frags + frm.frags >= MAX_SKB_FRAGS or (n and not frm.head_frag):
        return None
    to.frags += frm.frags + 1
    to.tailroom = 0  # skb_tailroom of a non-linear skb
    return frm.truesize - SKB_STRUCT_SIZE


@dataclass(slots=True, eq=False)
class Skb:
    """A received segment while it sits in a queue of the stack.

    ``ids`` lists the arrival ids of every wire segment whose bytes were merged into
    this skb, so each arrival can be followed to its fate (delivered or dropped).
    """

    seq: int
    end_seq: int
    flags: int
    ack_seq: int
    window: int
    options: TcpOptions
    data: bytes | bytearray  # a bytearray once something was coalesced onto it
    truesize: int
    doff: int = 20
    ids: list[int] = field(default_factory=list)
    raw_csum_ok: bool = True
    gso_segs: int = 1
    gso_size: int = 0
    arrived_ns: int = 0
    frags: int = 0  # nr_frags: page fragments beyond the head (at most MAX_SKB_FRAGS)
    charged: bool = False  # counted in sk_rmem_alloc (skb_set_owner_r)
    # The payload sits in page memory that another skb can take over (a NIC's
    # page buffers, a paged skb). False for a kmalloc'd linear area, which
    # skb_try_coalesce cannot steal (skb_head_is_locked).
    head_frag: bool = True
    # skb_tailroom: free bytes after the payload in a linear head (0 once it has frags)
    tailroom: int = 0

    @classmethod
    def from_segment(cls, seg: Segment, seg_id: int, now: int, *, header_len: int,
                     csum_ok: bool = True, truesize: int | None = None) -> Skb:
        data = seg.payload
        flags = seg.flags
        if truesize is None:
            truesize = rx_truesize(NET_IP_ALIGN_AND_HEADERS - 20 + 20 + header_len + len(data))
        # One skb per arriving segment: every field positionally, in declaration order
        # (half the cost of keywords and default factories); end_seq is Segment.end_seq
        # (SYN is 0x02, FIN 0x01).
        return cls(seg.seq, (seg.seq + len(data) + ((flags >> 1) & 1) + (flags & 1)) & SEQ_MASK,
                   flags, seg.ack, seg.window, seg.options, data, truesize,
                   header_len, [seg_id], csum_ok, 1, 0, now, 0, False, True)

    @property
    def len(self) -> int:
        return len(self.data)

    def append_data(self, more: bytes | bytearray) -> None:
        """Put ``more`` after this skb's payload. The first append turns the payload into
        a bytearray that later ones extend in place: a new bytes object per coalesced
        segment would copy the whole run again each time."""
        if type(self.data) is bytes:
            self.data = bytearray(self.data)
        self.data += more

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def fin(self) -> bool:
        return bool(self.flags & TcpFlags.FIN)

    @property
    def syn(self) -> bool:
        return bool(self.flags & TcpFlags.SYN)

    def data_end_seq(self) -> int:
        return seq_add(self.seq, self.len + self.syn)
