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

from actors.mib import ALL_NAMES, current_counters
from actors.profiles import PROFILES
from actors.stack.net import current_drops, drop_counters

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
    return _ss_render(sockets, [ss_info(sk) for sk in sockets])


def _ss_render(sockets: Sequence[Mapping[str, Any]], infos: Sequence[str]) -> list[str]:
    """ss's table: the header, then per socket its columns and its info line."""
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
        if n and infos[n - 1]:
            out.append(infos[n - 1].rstrip())
    return out


# --- ss -tin of the real Linux sender, beside the receiver's ss -tmi ------------------

def ss_sender_lines(views: Sequence[Mapping[str, Any]]) -> list[str]:
    """The real sender's sockets (``ss -tin`` inside the run's namespace) laid out as
    :func:`ss_lines` lays out the receiver's, each info line as ss printed it."""
    return _ss_render(views, ["\t " + str(v["info"]) if v.get("info") else ""
                              for v in views])


def ss_fields(info: str) -> dict[str, str]:
    """The ``name:value`` fields of an ss info line, first one of a name kept."""
    out: dict[str, str] = {}
    for word in info.split():
        name, sep, value = word.partition(":")
        if sep and name and name not in out:
            out[name] = value
    return out


# What each side calls the same thing: (row, the receiver's ss -tmi fields, the sender's
# ss -tin fields). ss's wscale is snd_wscale,rcv_wscale: each side's is the other mirrored.
_SS_SIDE_BY_SIDE: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("wscale", ("wscale",), ("wscale",)),
    ("mss", ("mss", "rcvmss", "advmss"), ("mss", "rcvmss", "advmss", "pmtu")),
    ("window", ("rcv_wnd", "rcv_space", "rcv_ssthresh"), ("snd_wnd", "rwnd_limited")),
    ("bytes", ("bytes_received",), ("bytes_sent", "bytes_acked", "bytes_retrans",
                                    "notsent")),
    ("segments", ("segs_in", "data_segs_in"), ("segs_out", "data_segs_out", "retrans")),
    ("rtt", ("rcv_rtt", "ato"), ("rtt", "minrtt", "rto")),
    ("congestion", (), ("cwnd", "ssthresh", "unacked", "sacked", "lost", "backoff")),
    ("last", ("lastrcv",), ("lastsnd", "lastrcv", "lastack")),
)


def ss_side_by_side(receiver: Mapping[str, Any] | None, sender: Mapping[str, Any] | None
                    ) -> list[str]:
    """One connection's two views, field by field: the receiver's ``ss -tmi`` fields
    against the real sender's ``ss -tin`` fields, under each tool's own names."""
    mine = ss_fields(ss_info(receiver)) if receiver else {}
    theirs = ss_fields(str(sender.get("info", ""))) if sender else {}

    def cell(fields: dict[str, str], names: Sequence[str]) -> str:
        return " ".join(f"{n}:{fields[n]}" for n in names if n in fields) or "-"

    def queues(sk: Mapping[str, Any] | None) -> str:
        return "-" if not sk else f"Recv-Q:{sk.get('recv_q', 0)} Send-Q:{sk.get('send_q', 0)}"

    rows = [("state", str((receiver or {}).get("state", "-")),
             str((sender or {}).get("state", "-"))),
            ("queues", queues(receiver), queues(sender))]
    for label, rnames, snames in _SS_SIDE_BY_SIDE:
        row = (label, cell(mine, rnames), cell(theirs, snames))
        if row[1:] != ("-", "-"):
            rows.append(row)
    return columns(rows, ("", "receiver (rxpath)", "sender (Linux)"))


def _ss_pair(sk: Mapping[str, Any], view: Mapping[str, Any]) -> bool:
    """The same connection seen from both ends: each one's local address is the other's
    peer (the 4-tuple)."""
    return sk.get("local") == view.get("peer") and sk.get("peer") == view.get("local")


def ss_flow_lines(sockets: Sequence[Mapping[str, Any]],
                  senders: Mapping[str, Mapping[str, Any]],
                  netns: str | None = None) -> list[str]:
    """``rxpath ss`` of a run with real Linux senders: per flow (``senders`` maps each such
    flow to its sender's last ``ss -tin`` view, empty if no sample showed it), the
    receiver's socket as ``ss -tmi`` prints it, the sender's as ``ss -tin`` printed it,
    and the two side by side. Receiver sockets no sender matches come last, as ss prints
    them. Without senders, :func:`ss_lines`."""
    if not senders:
        return ss_lines(sockets)
    out: list[str] = []
    used: set[int] = set()
    where = f" in netns {netns}" if netns else ""
    for flow, view in senders.items():
        idx = next((i for i, sk in enumerate(sockets)
                    if i not in used and view and _ss_pair(sk, view)), None)
        sk = sockets[idx] if idx is not None else None
        if idx is not None:
            used.add(idx)
        tuple4 = (f"{view['local']} -> {view['peer']}" if view
                  else f"{sk['peer']} -> {sk['local']}" if sk else "no socket")
        if out:
            out.append("")
        out.append(f"{flow}: {tuple4}")
        out.append(f"{flow}: receiver, rxpath's emulated stack (ss -tmi at the end of the run)")
        out += ss_lines([sk]) if sk else ["  (no socket at the end of the run)"]
        if view:
            when = f" at {view['t_s']:.3f} s" if view.get("t_s") is not None else ""
            of = f", the last of {view['samples']} samples" if view.get("samples") else ""
            if view.get("then_state"):
                of = (f"; at {view['then_t_s']:.3f} s ss shows it {view['then_state']}, "
                      "with no tcp_info")
            out.append(f"{flow}: sender, the host kernel{where} (ss -tin{when}{of})")
            out += ss_sender_lines([view])
        else:
            out.append(f"{flow}: sender, the host kernel{where}: no ss -tin sample showed "
                       "its socket")
        out.append(f"{flow}: side by side")
        out += ["  " + line for line in ss_side_by_side(sk, view or None)]
    rest = [sk for i, sk in enumerate(sockets) if i not in used]
    if rest:
        out += ["", "other sockets (ss -tmi)", *ss_lines(rest)]
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

def current_names(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's summary.json with its counters and drop reasons under today's names (a run
    recorded before they followed Linux 6.18 and nstat's IpExt group has older ones)."""
    if isinstance(summary.get("nstat"), dict):
        summary["nstat"] = current_counters(summary["nstat"])
    if isinstance(summary.get("drops"), dict):
        summary["drops"] = current_drops(summary["drops"])
    return summary


def drop_rows(drops: Mapping[str, int], profile: str | None = None
              ) -> list[tuple[str, int, str]]:
    """(SKB_DROP_REASON_x, segments, counter) per reason, most frequent first, under
    6.18's names (an older run's too). The counter is the MIB the kernel increments at
    that reason's drop sites (comma-separated when two sites move different ones, as
    PROTO_MEM's do); "-" when there is none, or when the run's kernel profile lacks it
    (4.13 has no TCPZeroWindowDrop, for one)."""
    absent = PROFILES[profile].absent_counters if profile in PROFILES else frozenset()
    rows = []
    for reason, n in sorted(current_drops(drops).items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append((f"SKB_DROP_REASON_{reason}", int(n),
                     ",".join(drop_counters(reason, absent)) or "-"))
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


# --- how long a run took ---------------------------------------------------------------

def stopped_after(summary: Mapping[str, Any]) -> str:
    """ "complete after 6.583 s (start-up 1.586 s)": the time from the traffic's start,
    which the trace, the pcap and the report's plots all count from, then the actors'
    start-up before it. A summary without transfer_s (an older run) gives elapsed_s, which
    counts from the spawn."""
    reason = summary.get("reason")
    if summary.get("transfer_s") is None:
        return f"{reason} after {summary.get('elapsed_s')} s"
    up = summary.get("startup_s")
    return f"{reason} after {summary['transfer_s']} s" + (
        f" (start-up {up} s)" if up is not None else "")
