"""Kernel constants that more than one side needs (peer, stack, reader, scenario checks).

Each is defined here once and imported wherever it is used.
"""

from __future__ import annotations

# include/net/tcp.h
TCP_MSS_DEFAULT = 536  # assumed when a SYN carries no MSS option (RFC 1122)
TCP_MIN_MSS = 88  # the smallest MSS Linux accepts or uses for rcv_mss
TCP_INIT_CWND = 10  # initial congestion window, in segments (RFC 6928)
TCP_MAX_WSCALE = 14  # largest window scale shift (RFC 7323)

# Linux errno values (include/uapi/asm-generic/errno-base.h, errno.h). They travel in
# reader <-> stack messages, so they are Linux's numbers, not the host's errno module's.
EAGAIN = 11
EINVAL = 22
EPIPE = 32
ECONNRESET = 104
ENOTCONN = 107
ECONNREFUSED = 111
ETIMEDOUT = 110
EADDRINUSE = 98
EALREADY = 114
EISCONN = 106
EINPROGRESS = 115

# The readiness bits tcp_poll reports (include/uapi/linux/eventpoll.h).
EPOLLIN = 0x1
EPOLLOUT = 0x4
EPOLLERR = 0x8
EPOLLHUP = 0x10
EPOLLRDNORM = 0x40
EPOLLWRNORM = 0x100
EPOLLRDHUP = 0x2000

# TCP timers, in nanoseconds (the models' clock unit).
TCP_RTO_MIN = 200_000_000  # 200 ms
TCP_RTO_MAX = 120_000_000_000  # 120 s
TCP_TIMEOUT_INIT = 1_000_000_000  # initial RTO, also for the SYN and SYN-ACK (RFC 6298)
TCP_TIMEOUT_FALLBACK = 3_000_000_000  # RTO after a handshake with no RTT sample (RFC 6298 5.7)
