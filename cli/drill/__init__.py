"""``rxpath drill``: packetdrill scripts against the emulated receiver.

- :mod:`cli.drill.packetdrill` parses a script into an AST;
- :mod:`cli.drill.runner` gives it meaning against a :class:`~cli.drill.runner.Receiver`;
- :mod:`cli.drill.syscalls` is the user process: the fd table and every system call,
  as generators of typed socket operations;
- :mod:`cli.drill.model` and :mod:`cli.drill.pipeline` are the two receivers, each only
  a transport for those operations (the kernel model on a virtual clock, or the nic,
  cpu and stack processes in real time);
- :mod:`cli.drill.command` is the ``rxpath drill`` command (imported here so that
  importing the package registers it).
"""

from __future__ import annotations

from cli.drill.command import drill, format_result, run_script, summary

__all__ = ["drill", "format_result", "run_script", "summary"]
