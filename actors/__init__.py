"""Who does what: one subpackage per role (peer, nic, cpu, stack, reader) plus the shared runtime.

Each role has pure model modules (no sockets, no sleeping, time passed in) and a
thin process shell around them.
"""

import protocol  # noqa: F401  (checks a compiled build is fresh before its modules load)
