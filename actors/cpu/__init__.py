"""The cpu role: hardirq, NAPI softirq (net_rx_action), the IPv4 ingress checks."""
