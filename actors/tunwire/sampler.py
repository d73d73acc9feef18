"""The real sender's side of each connection over time: ``ss -tinHn`` every ``--every-ms``,
appended to ``RUN_DIR/ss-sender.txt`` (``# t=<s> s`` headers, seconds since the run start).

The tunwire actor starts it inside the run's namespace, so ``ss`` sees the senders'
sockets and nothing else. It is a process of its own because one ``ss`` costs a few
milliseconds of fork, exec and netlink dump: done in the actor, each sample would hold up
the TUN's frames that long. It stops when its stdin (a pipe the actor holds) closes, and
dies with the actor (``PR_SET_PDEATHSIG``, set by the actor).

    python -m actors.tunwire.sampler --out RUN_DIR/ss-sender.txt --t0-ns N --every-ms 100
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from actors.tunwire.netns import SS_COMMAND, format_sample


def take_sample(t0_ns: int, now_ns: int | None = None) -> str:
    """One sample: the header with the time since ``t0_ns``, then what ss printed (nothing
    if ss could not run)."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    try:
        out = subprocess.run(list(SS_COMMAND), capture_output=True, text=True,
                             timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return format_sample((now_ns - t0_ns) / 1e9, out)


def append(path: Path, text: str) -> None:
    # One write per sample: a reader tailing the file sees whole headers.
    with open(path, "ab") as f:
        f.write(text.encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="actors.tunwire.sampler")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--t0-ns", type=int, required=True)
    ap.add_argument("--every-ms", type=float, default=100.0)
    args = ap.parse_args(argv)
    every_ns = int(args.every_ms * 1e6)
    due = time.monotonic_ns()
    while True:
        append(args.out, take_sample(args.t0_ns))
        due += every_ns
        wait_s = max(0, due - time.monotonic_ns()) / 1e9
        # The actor never writes: stdin readable means EOF, the actor closed it (or died).
        if (select.select([sys.stdin], [], [], wait_s)[0]
                and not os.read(sys.stdin.fileno(), 1)):
            return 0
        due = max(due, time.monotonic_ns())  # a late sample does not bunch up the next


if __name__ == "__main__":
    sys.exit(main())
