"""What crosses a boundary: TCP/IPv4 segments, their wire encoding, and actor messages."""

from protocol.compiled import check_fresh

check_fresh()  # before any module `rxpath compile` built can be imported
