"""What an operator's Prometheus reads: the fleet's state as metrics, at /metrics."""
