"""failover_exporter: multi-region failover and image-latency exporter for Prometheus."""

__version__ = "0.1.0"
