"""A real Linux TCP sender as the wire source: a TUN device in a network namespace of
the run's own, whose frames go to the nic and whose ACKs come back from it.

``netns`` holds the pure parts (names, the ``ip`` commands, parsing ``ss -tin`` and
``TCP_INFO``) and the few system calls (``setns``, the TUN ioctl); ``actor`` is the
process shell; ``sender`` is the built-in sender program; ``guard`` removes the
namespace when the launcher goes away, however it goes.
"""

from actors.tunwire.netns import TUN_DEVICE, netns_name

__all__ = ["TUN_DEVICE", "netns_name"]
