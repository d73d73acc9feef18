"""Tables a user reads at the end of a run: nstat-style counters, NIC, softnet, flows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from actors.tunwire.netns import SS_FILE, last_views, parse_ss_samples
from cli import formats
from cli.checker import flow_state, summary_verdict

# The sender's stats shown per flow: segments it retransmitted, ACKs it got carrying SACK
# blocks and DSACK blocks, and zero-window probes it sent.
_SENDER_COLUMNS = ("segments_retransmitted", "sacks", "dsacks", "probes")


# The real Linux sender's figures per flow (#sender): its final TCP_INFO as ss -tin shows
# it, and peaks over the ss samples. (summary key, column)
SENDER_TABLE = (("cwnd", "cwnd"), ("ssthresh", "ssthresh"), ("max_cwnd", "max_cwnd"),
                ("snd_wnd", "snd_wnd"), ("rtt_ms", "rtt_ms"),
                ("segments_retransmitted", "retrans"), ("bytes_retrans", "bytes_retrans"),
                ("rwnd_limited_ms", "rwnd_limited_ms"), ("max_backoff", "backoff"),
                ("zero_window_samples", "zero_wnd"))


def real_senders(s: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(flow, its sender's figures) of each flow a real Linux sender sent."""
    return [(f["flow"], f["sender"]) for f in s.get("flows", [])
            if (f.get("sender") or {}).get("kind")]


def sender_rows(s: dict[str, Any]) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """The #sender table: rows and header."""
    rows = [(flow, *("-" if snd.get(k) is None else str(snd[k]) for k, _ in SENDER_TABLE))
            for flow, snd in real_senders(s)]
    return rows, ("flow", *(c for _, c in SENDER_TABLE))


def sender_views(s: dict[str, Any], run_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Per flow a real Linux sender sent: its socket's last ``ss -tin`` view (``{}`` if no
    sample showed it). From summary.json; for a run recorded before the summary kept the
    view, from ``RUN_DIR/ss-sender.txt``, matched by the flow's 4-tuple."""
    views = {flow: dict(snd.get("ss") or {}) for flow, snd in real_senders(s)}
    missing = [flow for flow, v in views.items() if not v]
    if not missing or run_dir is None or not (run_dir / SS_FILE).is_file():
        return views
    try:
        sc = json.loads((run_dir / "scenario.json").read_text())
        text = (run_dir / SS_FILE).read_text(errors="replace")
    except (OSError, ValueError):
        return views
    seen = last_views(parse_ss_samples(text))
    src = (sc.get("peer") or {}).get("address")
    stack = sc.get("stack") or {}
    dst = f"{stack.get('address')}:{stack.get('listen_port', 5001)}"
    for f in sc.get("flows") or []:
        if f.get("name") in missing:
            views[f["name"]] = seen.get((f"{src}:{f.get('sport')}", dst), {})
    return views


def socket_lines(s: dict[str, Any], run_dir: Path | None = None) -> list[str]:
    """The sockets as ``rxpath ss`` prints them: ``ss -tmi``; with real Linux senders,
    each flow's receiver socket, its sender's ``ss -tin`` and the two side by side."""
    return formats.ss_flow_lines(s.get("sockets") or [], sender_views(s, run_dir),
                                 s.get("netns"))


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
    if s.get("gro_merged"):
        echo("\n#GRO (nic.gro: frames each cpu's napi_poll merged into an earlier frame's "
             "skb; rxpath's own counter)")
        echo("\n".join(formats.counter_lines(s["gro_merged"])))
    if s.get("stack"):
        # Figures the scenario comments point to that Linux has no counter for.
        echo("\n#stack (rxpath's own counters: Linux has no MIB for these)")
        echo("\n".join(formats.counter_lines(s["stack"])))
    senders = real_senders(s)
    if s.get("sockets") or senders:
        # With real Linux senders, each flow's two ends: what rxpath ss prints.
        echo("\n#sockets (ss -tmi" + ("; each flow's real sender as ss -tin shows it in "
                                       "its namespace, and the two side by side)"
                                       if senders else ")"))
        echo("\n".join(socket_lines(s)))
    if senders:
        # The real Linux sender's own view of each connection: its final TCP_INFO (as
        # ss -tin shows it) and peaks over the ss samples in RUN_DIR/ss-sender.txt.
        echo(f"\n#sender (ss -tin in namespace {s.get('netns', '?')})")
        echo(table(*sender_rows(s)))
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
                     # "-": a real sender's command reported no tcp_info to count from
                     *("-" if (k in snd and snd[k] is None) else str(snd.get(k, ""))
                       for k in _SENDER_COLUMNS),
                     ",".join(f["readers"]), verdict))
    echo(table(rows, ("flow", "sent", "received", "bad", "eof", "retrans", "sacks", "dsacks",
                      "probes", "readers", "verdict")))
    v = summary_verdict(s)
    echo(f"\nstopped: {formats.stopped_after(s)}; verdict {v['state']}"
         + (f": {v['why']}" if v["why"] else ""))
    for e in s.get("errors", []):
        echo(f"error: {e}")


def _reader_flows(r: dict[str, Any]) -> str:
    """The flow a reader reads, or how many an epoll server serves."""
    flows = r.get("flows")
    if isinstance(flows, dict) and flows:
        return f"{r.get('flow', '')} +{len(flows) - 1}" if len(flows) > 1 else str(r.get("flow"))
    return str(r.get("flow", ""))
