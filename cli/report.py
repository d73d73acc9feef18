"""Tables a user reads at the end of a run: nstat-style counters, NIC, softnet, flows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer

from actors.mib import ALL_NAMES

# The sender's stats shown per flow: segments it retransmitted, ACKs it got carrying SACK
# blocks and DSACK blocks, and zero-window probes it sent.
_SENDER_COLUMNS = ("segments_retransmitted", "sacks", "dsacks", "probes")


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Left-aligned text columns, numbers right-aligned."""
    allrows: list[Sequence[str]] = ([header] if header else []) + list(rows)
    if not allrows:
        return ""
    widths = [max(len(r[i]) for r in allrows) for i in range(len(allrows[0]))]
    out = []
    for r in allrows:
        cells = [c.rjust(w) if c.replace(".", "").replace("-", "").isdigit() else c.ljust(w)
                 for c, w in zip(r, widths, strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def print_summary(s: dict[str, Any], *, all_counters: bool = False) -> None:
    echo = typer.echo
    nstat = s["nstat"]
    names = [n for n in ALL_NAMES if all_counters or nstat.get(n)]
    echo("\n#kernel counters (nstat)")
    echo(table([(n, str(nstat.get(n, 0))) for n in names]))
    if s.get("drops"):
        echo("\n#drops by reason (SKB_DROP_REASON_*)")
        echo(table([(k, str(v)) for k, v in sorted(s["drops"].items())]))
    nic = {k: v for k, v in s.get("nic", {}).items() if all_counters or v}
    if nic:
        echo("\n#NIC statistics (ethtool -S)")
        echo(table([(k, str(v)) for k, v in nic.items()]))
    echo("\n#/proc/net/softnet_stat (hex columns as the kernel prints them)")
    for cpu, cols in s.get("softnet_stat", {}).items():
        echo(f"{cpu}: " + " ".join(f"{int(v):08x}" for v in cols))
    if s.get("sockets"):
        echo("\n#sockets (ss -tmi)")
        rows = []
        for sk in s["sockets"]:
            m = sk["skmem"]
            rows.append((sk["state"], sk["peer"], str(sk["recv_q"]),
                         f"skmem:(r{m['r']},rb{m['rb']},f{m['f']},bl{m['bl']},d{m['d']})",
                         f"rcv_wnd:{sk['rcv_wnd']}", f"rcv_space:{sk['rcv_space']}",
                         f"rcv_mss:{sk['rcv_mss']}"))
        echo(table(rows, ("State", "Peer", "Recv-Q", "skmem", "window", "space", "mss")))
    senders = [(f["flow"], f["sender"]) for f in s["flows"]
                if (f.get("sender") or {}).get("kind")]
    if senders:
        # The real Linux sender's own view of each connection: its final TCP_INFO (as
        # ss -tin shows it) and peaks over the ss samples in RUN_DIR/ss-sender.txt.
        echo(f"\n#sender (ss -tin in namespace {s.get('netns', '?')})")
        cols = ("cwnd", "ssthresh", "max_cwnd", "snd_wnd", "rtt_ms", "segments_retransmitted",
                "bytes_retrans", "rwnd_limited_ms", "max_backoff", "zero_window_samples")
        echo(table([(flow, *(str(snd.get(k, "")) if snd.get(k) is not None else "-"
                             for k in cols)) for flow, snd in senders],
                   ("flow", "cwnd", "ssthresh", "max_cwnd", "snd_wnd", "rtt_ms", "retrans",
                    "bytes_retrans", "rwnd_limited_ms", "backoff", "zero_wnd")))
    readers = s.get("readers") or {}
    if readers:
        # direct: bytes copied into the reader's buffer while the stack replayed the
        # prequeue or backlog in its context (legacy), rather than read off the queue.
        echo("\n#readers")
        echo(table([(name, _reader_flows(r), str(r.get("reads", 0)),
                     str(r.get("bytes", 0)), str(r.get("direct_bytes", 0)),
                     str(r.get("eagain", 0)))
                    for name, r in readers.items()],
                   ("reader", "flow", "reads", "bytes", "direct", "eagain")))
    echo("\n#flows (retrans, sacks, dsacks, probes: as the sender counted them)")
    rows = []
    for f in s["flows"]:
        verdict = "intact" if f["intact"] else "BROKEN"
        snd = f.get("sender") or {}
        rows.append((f["flow"], str(f["bytes"]), str(f["received"]), str(f["bad_chunks"]),
                     "yes" if f["eof"] else "no",
                     *(str(snd.get(k, "")) for k in _SENDER_COLUMNS),
                     ",".join(f["readers"]), verdict))
    echo(table(rows, ("flow", "sent", "received", "bad", "eof", "retrans", "sacks", "dsacks",
                      "probes", "readers", "verdict")))
    echo(f"\nstopped: {s['reason']} after {s['elapsed_s']} s; "
         f"integrity {'holds' if s['integrity'] else 'BROKEN'}")
    for e in s.get("errors", []):
        echo(f"error: {e}")


def _reader_flows(r: dict[str, Any]) -> str:
    """The flow a reader reads, or how many an epoll server serves."""
    flows = r.get("flows")
    if isinstance(flows, dict) and flows:
        return f"{r.get('flow', '')} +{len(flows) - 1}" if len(flows) > 1 else str(r.get("flow"))
    return str(r.get("flow", ""))
