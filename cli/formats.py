"""One formatter per real tool, so ``rxpath stat``, ``rxpath ss``, the run summary and
``rxpath diff`` print a run's figures the way nstat, ss, ethtool and /proc print them.

Each function returns lines (no trailing newline). The layouts follow the tools' sources
(iproute2 misc/nstat.c and misc/ss.c, ethtool.c, net/core/net-procfs.c); tests/test_formats.py
pins them against lines taken from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actors.mib import ALL_NAMES
from actors.profiles import PROFILES
from actors.stack.net import DROP_REASONS

# --- nstat ----------------------------------------------------------------------------

# nstat's useless_numbers[]: read from /proc but never printed (gauges and constants).
NSTAT_HIDDEN = frozenset({"IpForwarding", "IpDefaultTTL", "TcpRtoAlgorithm", "TcpRtoMin",
                          "TcpRtoMax", "TcpMaxConn", "TcpCurrEstab"})


def nstat_names(nstat: Mapping[str, int], *, zeros: bool) -> list[str]:
    """The counters nstat shows, in the kernel's order (ALL_NAMES follows /proc)."""
    return [n for n in ALL_NAMES
            if n not in NSTAT_HIDDEN and (zeros or nstat.get(n))]


def nstat_lines(nstat: Mapping[str, int], *, zeros: bool = False) -> list[str]:
    """``nstat -a [-z]``: dump_kern_db's "#%s" header, then "%-32s%-16llu%6.1f" per
    counter. The rate column is nstat's EWMA, which only its daemon (-d) computes: a run
    read once has none, so it is 0.0 as nstat prints it without the daemon."""
    lines = ["#kernel"]
    lines += [f"{n:<32}{int(nstat.get(n, 0)):<16}{0.0:6.1f}"
              for n in nstat_names(nstat, zeros=zeros)]
    return lines


def nstat_json(nstat: Mapping[str, int], *, zeros: bool = False, pretty: bool = False,
               extra: Mapping[str, Any] | None = None) -> str:
    """``nstat -j [-p]``: {"kernel": {name: value, ...}} in the kernel's order, compact
    unless pretty (json_writer: 4-space indent, "name": value). ``extra`` adds rxpath's
    other groups as further top-level keys."""
    out: dict[str, Any] = {"kernel": {n: int(nstat.get(n, 0))
                                      for n in nstat_names(nstat, zeros=zeros)}}
    out.update(extra or {})
    if pretty:
        return json.dumps(out, indent=4)
    return json.dumps(out, separators=(",", ":"))


# --- ss -tmi --------------------------------------------------------------------------

# ss's columns[] for -t (Netid is disabled when one table is shown): header, alignment,
# left delimiter. The last column (the "\n\t" extension with skmem and tcp_info) has no
# header.
_SS_COLUMNS = (("State", "<", ""), ("Recv-Q", "<", " "), ("Send-Q", "<", " "),
               ("Local Address:", ">", " "), ("Port", "<", ""),
               ("Peer Address:", ">", " "), ("Port", "<", ""), ("Process", "<", ""))


def skmem(m: Mapping[str, int]) -> str:
    """print_skmeminfo: all nine SK_MEMINFO_* fields."""
    return (f"skmem:(r{m['r']},rb{m['rb']},t{m['t']},tb{m['tb']},f{m['f']},w{m['w']},"
            f"o{m['o']},bl{m['bl']},d{m['d']})")


def _g(value: float) -> str:
    return f"{value:g}"  # C's %g, which ss uses for times in ms


def ss_info(sk: Mapping[str, Any]) -> str:
    """The second line of ``ss -tmi``: tcp_show_info's skmem, then tcp_stats_print's
    fields in its order, each printed (as ss does) only when non-zero. Fields tcp_info
    has but the receiver model does not keep (rtt, rto, cwnd, ...) are left out."""
    parts = [skmem(sk["skmem"])]
    snd_ws, rcv_ws = sk.get("snd_wscale", 0), sk.get("rcv_wscale", 0)
    if snd_ws or rcv_ws:
        parts.append(f"wscale:{snd_ws},{rcv_ws}")
    fields: tuple[tuple[str, str, Any], ...] = (
        ("ato", "ato_ms", _g), ("mss", "snd_mss", int), ("rcvmss", "rcv_mss", int),
        ("advmss", "advmss", int), ("bytes_received", "bytes_received", int),
        ("segs_in", "segs_in", int), ("data_segs_in", "data_segs_in", int),
        ("lastrcv", "last_data_recv_ms", int), ("rcv_rtt", "rcv_rtt_ms", _g),
        ("rcv_space", "rcv_space", int), ("rcv_ssthresh", "rcv_ssthresh", int),
        ("snd_wnd", "snd_wnd", int), ("rcv_wnd", "rcv_wnd", int))
    for label, key, fmt in fields:
        value = sk.get(key)
        if value:
            parts.append(f"{label}:{fmt(value)}")
    return "\t " + " ".join(parts)


def _split_addr(addr: str) -> tuple[str, str]:
    host, _, port = str(addr).rpartition(":")
    return host + ":", port


def ss_lines(sockets: Sequence[Mapping[str, Any]]) -> list[str]:
    """``ss -tmi`` as it prints to a pipe (render() without a terminal: each column as
    wide as its widest field plus its delimiter, addresses right-aligned, Recv-Q and
    Send-Q as "%-6d"), with trailing blanks removed."""
    rows: list[list[str]] = [[c[0] for c in _SS_COLUMNS]]
    for sk in sockets:
        local, lport = _split_addr(sk["local"])
        peer, rport = _split_addr(sk["peer"])
        rows.append([str(sk["state"]), f"{int(sk.get('recv_q', 0)):<6d}",
                     f"{int(sk.get('send_q', 0)):<6d}", local, lport, peer, rport, ""])
    widths = []
    for i, (_, _, ldelim) in enumerate(_SS_COLUMNS):
        longest = max(len(r[i]) for r in rows)
        widths.append(longest + (len(ldelim) if i and longest else 0))
    out = []
    for n, row in enumerate(rows):
        line = ""
        for i, ((_, align, ldelim), cell) in enumerate(zip(_SS_COLUMNS, row, strict=True)):
            printed = ldelim if i else ""
            if align == ">":
                printed += " " * max(widths[i] - len(cell) - len(printed), 0)
            printed += cell
            line += printed.ljust(widths[i]) if align == "<" else printed
        out.append(line.rstrip())
        if n:
            out.append(ss_info(sockets[n - 1]).rstrip())
    return out


# --- ethtool -S -----------------------------------------------------------------------

def ethtool_lines(stats: Mapping[str, int]) -> list[str]:
    """``ethtool -S``: do_gstats' "%s statistics:" header, then "     %.*s: %llu" for
    every statistic, zeros included, in the driver's order."""
    return ["NIC statistics:"] + [f"     {k}: {int(v)}" for k, v in stats.items()]


# --- /proc/net/softnet_stat -----------------------------------------------------------

# softnet_seq_show's columns: 4.13 prints the first eleven, 6.x adds the backlog length,
# the CPU index and the two queue lengths. Unnamed ones are always 0 (was fastroute).
SOFTNET_COLUMNS = ("processed", "dropped", "time_squeeze", None, None, None, None, None,
                   "cpu_collision", "received_rps", "flow_limit_count", "backlog_len",
                   "cpu", "input_qlen", "process_qlen")


def softnet_lines(softnet: Mapping[str, Sequence[int]]) -> list[str]:
    """/proc/net/softnet_stat: one row per CPU, every column "%08x", space-separated."""
    return [" ".join(f"{int(v):08x}" for v in cols) for cols in softnet.values()]


def softnet_decoded(softnet: Mapping[str, Sequence[int]]) -> list[str]:
    """The same rows in decimal under the kernel's field names (zero-only padding left out)."""
    width = max((len(c) for c in softnet.values()), default=0)
    named = [(i, name) for i, name in enumerate(SOFTNET_COLUMNS[:width])
             if name is not None and name != "cpu"]
    rows = [[cpu, *(str(int(cols[i])) if i < len(cols) else "-" for i, _ in named)]
            for cpu, cols in softnet.items()]
    return columns(rows, ["cpu", *(name for _, name in named)])


# --- drop reasons ---------------------------------------------------------------------

def drop_rows(drops: Mapping[str, int], profile: str | None = None
              ) -> list[tuple[str, int, str]]:
    """(SKB_DROP_REASON_x, segments, counter) per reason, most frequent first. The counter
    is the MIB the kernel increments at that drop site; "-" when there is none, or when
    the run's kernel profile lacks it (4.13 has no TCPZeroWindowDrop, for one)."""
    absent = PROFILES[profile].absent_counters if profile in PROFILES else frozenset()
    rows = []
    for reason, n in sorted(drops.items(), key=lambda kv: (-kv[1], kv[0])):
        counter = DROP_REASONS.get(reason)
        rows.append((f"SKB_DROP_REASON_{reason}", int(n),
                     counter if counter and counter not in absent else "-"))
    return rows


def drop_lines(drops: Mapping[str, int], profile: str | None = None) -> list[str]:
    """``SKB_DROP_REASON_TCP_CSUM  14  TcpInCsumErrors``, aligned."""
    return columns([(r, str(n), c) for r, n, c in drop_rows(drops, profile)])


# --- plain counters -------------------------------------------------------------------

def counter_lines(counters: Mapping[str, Any]) -> list[str]:
    """name and value of counters that have no Linux name (the stack's own figures)."""
    return columns([(k, str(v)) for k, v in counters.items()])


def plain_counters(role: Mapping[str, Any]) -> dict[str, int]:
    """The integer figures of an actor's role counters (lists and tables left out)."""
    return {k: int(v) for k, v in role.items()
            if isinstance(v, int) and not isinstance(v, bool)}


# --- shared column layout -------------------------------------------------------------

def _numeric(cell: str) -> bool:
    return cell.lstrip("+-").replace(".", "", 1).isdigit()


def columns(rows: Iterable[Sequence[str]], header: Sequence[str] | None = None) -> list[str]:
    """Text left-aligned, numbers right-aligned, two spaces between columns."""
    allrows: list[Sequence[str]] = ([header] if header else []) + list(rows)
    if not allrows:
        return []
    widths = [max(len(r[i]) for r in allrows) for i in range(len(allrows[0]))]
    return ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                      for c, w in zip(r, widths, strict=True)).rstrip() for r in allrows]
