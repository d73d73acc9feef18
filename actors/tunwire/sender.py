"""The built-in sender: a real Linux TCP connection that carries one flow's payload.

    python -m actors.tunwire.sender --src 10.0.0.1 --sport 40001 --dst 10.0.0.2 \\
        --dport 5001 --flow-id 1 --bytes 4000000 --report RUN/senders/f1.json

It binds the flow's source address and port (so the 4-tuple is the topology's),
connect()s, writes the flow's deterministic bytes (:mod:`actors.peer.payload`, the same
the emulated peer sends; or ``--file``'s bytes), waits until the receiver has
acknowledged them all, records the socket's ``TCP_INFO`` and closes: the reader sees
EOF. Runs inside the run's network namespace; the host kernel's TCP does everything
else (cwnd, RTO, SACK, probes).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

from actors.peer.payload import payload_bytes
from actors.runtime import procutil
from actors.tunwire.netns import TCP_INFO_LEN, parse_tcp_info

CHUNK = 65536


def _outq(s: socket.socket) -> int:
    buf = fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ
    return int(struct.unpack("i", buf)[0])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actors.tunwire.sender")
    p.add_argument("--src", required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--dport", type=int, required=True)
    p.add_argument("--flow-id", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--file", type=Path, help="send this file instead of the payload")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    procutil.set_parent_death_signal(signal.SIGKILL)
    started = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.src, args.sport))
    s.settimeout(args.timeout)
    s.connect((args.dst, args.dport))
    digest = hashlib.sha256()
    sent = 0
    content = args.file.read_bytes() if args.file else None
    while sent < args.bytes:
        n = min(CHUNK, args.bytes - sent)
        data = (payload_bytes(args.flow_id, sent, n) if content is None
                else content[sent:sent + n])
        s.sendall(data)
        digest.update(data)
        sent += len(data)
    # Everything acknowledged before the final view: SIOCOUTQ counts the bytes of the
    # send queue not yet acked, sent or not (tcpi_unacked misses those a zero window
    # holds back).
    deadline = time.monotonic() + args.timeout
    while _outq(s) and time.monotonic() < deadline:
        time.sleep(0.005)  # polling the kernel's socket state, not synchronising with a peer
    info = parse_tcp_info(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN))
    report = {"bytes": sent, "sha256": digest.hexdigest(), "tcp_info": info,
              "seconds": round(time.monotonic() - started, 3), "pid": os.getpid()}
    s.close()
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text(json.dumps(report) + "\n")
    tmp.rename(args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
