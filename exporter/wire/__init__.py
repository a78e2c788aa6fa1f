"""The wire under the probes: sockets stamped with the kernel's own times, TLS in memory,
HTTP/1.1, a keep-alive pool. Nothing here knows a probe kind or its settings."""
