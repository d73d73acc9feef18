"""Tables a user reads at the end of a run: nstat-style counters, NIC, softnet, flows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer

from cli import formats
from cli.checker import flow_state, summary_verdict

# The sender's stats shown per flow: segments it retransmitted, ACKs it got carrying SACK
# blocks and DSACK blocks, and zero-window probes it sent.
_SENDER_COLUMNS = ("segments_retransmitted", "sacks", "dsacks", "probes")


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Left-aligned text columns, numbers right-aligned."""
    return "\n".join(formats.columns(rows, header))


def print_summary(s: dict[str, Any], *, zeros: bool = False) -> None:
    """The end-of-run summary: each group in its real tool's format (cli/formats.py),
    then rxpath's own tables (sender, readers, flows) and the verdict."""
    echo = typer.echo
    echo("")
    echo("\n".join(formats.nstat_lines(s["nstat"], zeros=zeros)))
    if s.get("drops"):
        echo("\n#drops (SKB_DROP_REASON_*, segments, the counter that drop site moves)")
        echo("\n".join(formats.drop_lines(s["drops"], s.get("profile"))))
    if s.get("nic"):
        echo("\n#NIC statistics (ethtool -S)")
        echo("\n".join(formats.ethtool_lines(s["nic"])))
    softnet = s.get("softnet_stat") or {}
    if softnet:
        echo("\n#/proc/net/softnet_stat")
        echo("\n".join(formats.softnet_lines(softnet)))
        echo("\n#softnet_stat decoded")
        echo("\n".join(formats.softnet_decoded(softnet)))
    if s.get("stack"):
        # Figures the scenario comments point to that Linux has no counter for.
        echo("\n#stack (rxpath's own counters: Linux has no MIB for these)")
        echo("\n".join(formats.counter_lines(s["stack"])))
    if s.get("sockets"):
        echo("\n#sockets (ss -tmi)")
        echo("\n".join(formats.ss_lines(s["sockets"])))
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
        verdict = flow_state(f)  # the checker's, as summary.json holds it
        snd = f.get("sender") or {}
        rows.append((f["flow"], str(f["bytes"]), str(f["received"]), str(f["bad_chunks"]),
                     "yes" if f["eof"] else "no",
                     *(str(snd.get(k, "")) for k in _SENDER_COLUMNS),
                     ",".join(f["readers"]), verdict))
    echo(table(rows, ("flow", "sent", "received", "bad", "eof", "retrans", "sacks", "dsacks",
                      "probes", "readers", "verdict")))
    v = summary_verdict(s)
    echo(f"\nstopped: {s['reason']} after {s['elapsed_s']} s; verdict {v['state']}"
         + (f": {v['why']}" if v["why"] else ""))
    for e in s.get("errors", []):
        echo(f"error: {e}")


def _reader_flows(r: dict[str, Any]) -> str:
    """The flow a reader reads, or how many an epoll server serves."""
    flows = r.get("flows")
    if isinstance(flows, dict) and flows:
        return f"{r.get('flow', '')} +{len(flows) - 1}" if len(flows) > 1 else str(r.get("flow"))
    return str(r.get("flow", ""))
