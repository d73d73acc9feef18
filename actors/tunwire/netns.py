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

# The sampler's command: -H no header (a sample is only sockets), -n numeric ports (ss would
# otherwise print a port /etc/services names, 5001 as commplex-link on some systems).
SS_COMMAND = ("ss", "-tinHn")
SS_FILE = "ss-sender.txt"    # in the run dir: "# t=<s> s" then that sample's ss lines
SS_HEADER = "# t="

_TCP_FIN, _TCP_RST = 0x01, 0x04
_SS_PAIR = re.compile(r"(\w+):(\S+)")
_ADDR = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\S+):(\d+)\s+(\S+):(\d+)")
_SS_INT = ("cwnd", "ssthresh", "snd_wnd", "unacked", "backoff", "mss", "rto", "lost",
           "sacked", "bytes_sent", "bytes_retrans", "bytes_acked", "segs_out", "segs_in",
           "data_segs_out", "delivered", "pmtu")


def parse_ss(text: str) -> list[dict[str, Any]]:
    """The sockets of ``ss -tinH``: state, queues, ports, the fields a user compares with
    the receiver (cwnd, ssthresh, rtt, snd_wnd, retrans, unacked, backoff, rwnd_limited,
    ...), and the two lines as ss printed them (``line``, ``info``)."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _ADDR.match(line)
        if m:
            cur = {"state": m.group(1), "recv_q": int(m.group(2)), "send_q": int(m.group(3)),
                   "local": f"{m.group(4)}:{m.group(5)}", "sport": int(m.group(5)),
                   "peer": f"{m.group(6)}:{m.group(7)}", "line": line.rstrip(), "info": ""}
            out.append(cur)
            rest = line[m.end():]
        else:
            if cur is not None and line.strip():
                cur["info"] = (cur["info"] + " " + line.strip()).strip()
            rest = line
        if cur is None:
            continue
        for key, value in _SS_PAIR.findall(rest):
            if key in _SS_INT:
                cur[key] = _num(value)
            elif key == "rtt":
                # rtt:<srtt>/<rttvar>, in ms
                srtt, _, var = value.partition("/")
                cur["rtt_ms"] = _num(srtt)
                if var:
                    cur["rttvar_ms"] = _num(var)
            elif key == "retrans":
                # retrans:<retransmitted now, tcpi_retrans>/<total, tcpi_total_retrans>
                now, _, total = value.partition("/")
                cur["retrans_out"] = _num(now)
                cur["retrans"] = _num(total or now)
            elif key == "rwnd_limited":
                cur["rwnd_limited_ms"] = _num(value.split("ms")[0])
    return out


def ends_connection(frame: bytes) -> bool:
    """An IPv4 TCP segment with FIN or RST: its sender is closing the connection."""
    at = (frame[0] & 0x0F) * 4 + 13  # the TCP header's flags byte
    return len(frame) > at and bool(frame[at] & (_TCP_FIN | _TCP_RST))


def in_flight(sk: dict[str, Any]) -> int | float:
    """tcp_packets_in_flight() from ss's fields: packets_out (unacked) - (sacked_out +
    lost_out) + retrans_out."""
    return (sk.get("unacked", 0) - sk.get("sacked", 0) - sk.get("lost", 0)
            + sk.get("retrans_out", 0))


def format_sample(t_s: float, ss_output: str) -> str:
    """One sample of ``ss-sender.txt``: the header with the time since the run start, what
    ss printed, and a blank line, which ss never prints: a reader of a file still being
    written knows a sample is whole when it has seen that line."""
    body = ss_output if not ss_output or ss_output.endswith("\n") else ss_output + "\n"
    return f"{SS_HEADER}{t_s:.3f} s\n{body}\n"


def whole_samples(data: bytes) -> bytes:
    """The part of ``ss-sender.txt`` data that ends with a whole sample."""
    end = data.rfind(b"\n\n")
    return data[:end + 2] if end >= 0 else b""


def parse_ss_samples(text: str) -> list[tuple[float, list[dict[str, Any]]]]:
    """``ss-sender.txt``: (seconds since the run start, that sample's sockets) per sample."""
    samples: list[tuple[float, list[dict[str, Any]]]] = []
    t: float | None = None
    lines: list[str] = []

    def flush() -> None:
        if t is not None:
            samples.append((t, parse_ss("\n".join(lines))))

    for line in text.splitlines():
        if line.startswith(SS_HEADER):
            flush()
            t, lines = float(_num(line[len(SS_HEADER):].split()[0])), []
        else:
            lines.append(line)
    flush()
    return samples


def fold_view(prev: dict[str, Any] | None, sk: dict[str, Any], t_s: float
              ) -> dict[str, Any]:
    """A socket's last view after one more sample of it (at ``t_s``): that sample, with
    its time and how many samples showed the socket (``samples``). But a sample without
    tcp_info after one with it keeps the earlier view and notes the state it went on to
    (``then_state``, ``then_t_s``): ss shows an orphaned FIN-WAIT-2 or a TIME-WAIT socket
    as a timewait socket, which has no cwnd, rtt or windows left to show."""
    seen = (prev or {}).get("samples", 0) + 1
    if prev and prev.get("info") and not sk.get("info"):
        return {**prev, "samples": seen, "then_state": sk["state"], "then_t_s": t_s}
    return {**sk, "t_s": t_s, "samples": seen}


def last_views(samples: Sequence[tuple[float, Sequence[dict[str, Any]]]]
               ) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (local, peer) address pair: its socket's last view (:func:`fold_view`)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for t, socks in samples:
        for sk in socks:
            key = (sk["local"], sk["peer"])
            out[key] = fold_view(out.get(key), sk, t)
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
