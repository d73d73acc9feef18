"""What crosses a boundary: TCP/IPv4 segments, their wire encoding, and actor messages."""
