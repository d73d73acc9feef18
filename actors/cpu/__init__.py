"""The cpu role: hardirq, NAPI softirq (net_rx_action), the IPv4 ingress checks.

``napi`` is the pure state machine (it runs ``ip_rcv`` from ``ip_rcv`` on every frame
it polls and counts into ``softnet``); the process shell feeds it the nic's DMA writes
and interrupts and the stack's answers; ``trace`` records it when tracing is on.
"""
