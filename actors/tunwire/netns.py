"""The run's network namespace and TUN device: names, ``ip`` commands, and the parsers of
the sender side's view (``ss -tin``, ``TCP_INFO``).

The TUN device is opened without ``IFF_VNET_HDR`` and no offloads are turned on
(``TUNSETOFFLOAD`` is never called), so the kernel hands it MTU-sized segments with
complete checksums: no TSO/GSO super-segments, no GRO to model. With the default MTU
of 1500 the real sender's MSS is 1460.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import signal
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TUN_DEVICE = "rxtun0"      # inside the run's namespace, so one name serves every run
TUN_MTU = 1500
NETNS_PREFIX = "rxpath-"
NETNS_DIR = Path("/run/netns")

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000


def netns_name(run_id: str) -> str:
    """The namespace of one run: ``rxpath-<shortid>`` (at most 15 useful characters)."""
    short = re.sub(r"[^a-z0-9]", "", run_id.lower())[-8:] or "run"
    return f"{NETNS_PREFIX}{short}"


def setup_commands(device: str, local: str, remote: str, mtu: int = TUN_MTU
                   ) -> list[list[str]]:
    """``ip`` commands, run inside the namespace, that give the TUN device the sender's
    address and route the emulated receiver's address through it (nothing else is
    routed: the namespace has no other device but ``lo``)."""
    return [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "set", device, "mtu", str(mtu), "up"],
        ["ip", "addr", "add", f"{local}/32", "dev", device],
        ["ip", "route", "add", f"{remote}/32", "dev", device, "src", local],
    ]


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (``ip netns pids``)."""
    try:
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def delete_netns(name: str) -> None:
    """Remove the namespace's name; the namespace itself (and its TUN device) goes with
    the last process in it, so those are killed first."""
    for pid in netns_pids(name):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if netns_exists(name):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


def enter_netns(name: str) -> None:
    """Move the calling thread into the named namespace (``setns(2)``); what it opens and
    spawns from now on lives there."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(device: str) -> int:
    """A non-blocking fd of a new TUN device (IPv4 frames, no packet info header)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", device.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


# -- the sender side's view ------------------------------------------------------------

_SS_PAIR = re.compile(r"(\w+):(\S+)")
_ADDR = re.compile(r"^(\S+)\s+\d+\s+(\d+)\s+(\S+):(\d+)\s+(\S+):(\d+)")


def parse_ss(text: str) -> list[dict[str, Any]]:
    """The sockets of ``ss -tinH``: state, ports, and the fields a user compares with the
    receiver (cwnd, ssthresh, rtt, snd_wnd, retrans, unacked, backoff, rwnd_limited)."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _ADDR.match(line)
        if m:
            cur = {"state": m.group(1), "send_q": int(m.group(2)),
                   "local": f"{m.group(3)}:{m.group(4)}", "sport": int(m.group(4)),
                   "peer": f"{m.group(5)}:{m.group(6)}"}
            out.append(cur)
            rest = line[m.end():]
        else:
            rest = line
        if cur is None:
            continue
        for key, value in _SS_PAIR.findall(rest):
            if key in ("cwnd", "ssthresh", "snd_wnd", "unacked", "backoff", "mss", "rto",
                       "lost", "sacked"):
                cur[key] = _num(value)
            elif key == "rtt":
                cur["rtt_ms"] = _num(value.split("/")[0])
            elif key == "retrans":
                # retrans:<now>/<total>
                cur["retrans"] = _num(value.split("/")[-1])
            elif key == "rwnd_limited":
                cur["rwnd_limited_ms"] = _num(value.split("ms")[0])
            elif key in ("bytes_sent", "bytes_retrans", "bytes_acked"):
                cur[key] = _num(value)
    return out


def _num(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return 0


# struct tcp_info (include/uapi/linux/tcp.h): 8 u8 fields, then u32 / u64 fields.
_TCP_INFO_U32 = ("rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans",
                 "fackets", "last_data_sent", "last_ack_sent", "last_data_recv",
                 "last_ack_recv", "pmtu", "rcv_ssthresh", "rtt", "rttvar", "snd_ssthresh",
                 "snd_cwnd", "advmss", "reordering", "rcv_rtt", "rcv_space", "total_retrans")
TCP_INFO_LEN = 232
_OFF_RWND_LIMITED = 176   # u64 tcpi_rwnd_limited (usec)
_OFF_BYTES_SENT = 200     # u64 tcpi_bytes_sent, then tcpi_bytes_retrans
_OFF_SND_WND = 228        # u32 tcpi_snd_wnd (5.4 on)


def parse_tcp_info(raw: bytes) -> dict[str, int]:
    """The fields of ``getsockopt(TCP_INFO)`` the run reports (as far as the kernel gave)."""
    out: dict[str, int] = {}
    if len(raw) >= 8:
        out["probes"] = raw[3]
        out["backoff"] = raw[4]
    n = min(len(_TCP_INFO_U32), (len(raw) - 8) // 4)
    for i, value in enumerate(struct.unpack_from(f"<{n}I", raw, 8)):
        out[_TCP_INFO_U32[i]] = value
    if len(raw) >= _OFF_RWND_LIMITED + 8:
        out["rwnd_limited_us"] = struct.unpack_from("<Q", raw, _OFF_RWND_LIMITED)[0]
    if len(raw) >= _OFF_BYTES_SENT + 16:
        out["bytes_sent"], out["bytes_retrans"] = struct.unpack_from("<QQ", raw, _OFF_BYTES_SENT)
    if len(raw) >= _OFF_SND_WND + 4:
        out["snd_wnd"] = struct.unpack_from("<I", raw, _OFF_SND_WND)[0]
    return out


def expand(template: Sequence[str], values: dict[str, str]) -> list[str]:
    """A command sender's argv with ``{src}``, ``{sport}``, ``{dst}``, ``{dport}``,
    ``{bytes}`` and ``{file}`` filled in."""
    return [arg.format(**values) for arg in template]
