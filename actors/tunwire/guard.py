"""The cleanup guard of one run's network namespace.

    python -m actors.tunwire.guard NETNS  (stdin: the read end of a pipe)

``rxpath run`` starts it right after creating the namespace and keeps the pipe's write
end. Whenever that end closes — the run finished, raised, was interrupted, or the
launcher was SIGKILLed (the kernel closes its fds) — the guard reads EOF, kills every
process still in the namespace, deletes it (its TUN device goes with it) and exits. It
runs in its own session and ignores the terminal's signals, so a Ctrl-C that stops the
launcher does not stop the cleanup.
"""

from __future__ import annotations

import signal
import sys

from actors.tunwire.netns import delete_netns


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m actors.tunwire.guard NETNS", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    print("ready", flush=True)
    while sys.stdin.buffer.read(4096):
        pass
    delete_netns(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
