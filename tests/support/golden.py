"""The inputs of the golden /metrics file: a config with every probe kind, and fixed results."""

from __future__ import annotations

from exporter import metrics
from exporter.model import Target
from exporter.state import Result

GOLDEN_CONFIG = r"""
vantage: golden
defaults: {interval: 5s, timeout: 2s, max_concurrency: 64}
control:
  - name: ctl
    probe: {kind: http, url: "http://127.0.0.1:9/healthz"}
services:
  - name: shop
    labels: {team: payments}
    regions:
      - {name: eu-west, role: primary, priority: 1}
      - {name: us-east, role: standby, priority: 2, maintenance: true}
    images:
      - {name: slim, ref: "example/shop:slim"}
      - {name: full, ref: "example/shop:full"}
    targets:
      - {name: eu-slim, region: eu-west, image: slim, labels: {tier: gold},
         probe: {kind: http, url: "http://127.0.0.1:9/healthz"}}
      - {name: us-full-db, region: us-east, image: full, interval: 10s,
         probe: {kind: tcp, address: "127.0.0.1:9"}}
      - {name: 'we"ird\name', region: us-east, image: slim,
         probe: {kind: http, url: "http://127.0.0.1:9/x"}}
      - {name: eu-grpc, region: eu-west, image: slim,
         probe: {kind: grpc, address: "127.0.0.1:9", service: shop.Cart}}
      - {name: eu-dns, region: eu-west, image: slim,
         probe: {kind: dns, server: "127.0.0.1:9", name: shop.example., type: A}}
"""


def fixed_result(target: Target, n: int, success: bool) -> Result:
    return Result(
        target=target,
        started=1_700_000_000.0 + n,
        duration=[0.0004, 0.003, 0.012, 0.3, 7.0][n % 5],
        success=success,
        reason=None if success else "connect",
        message="ok" if success else "connection refused",
        phases={"dns": 0.0001, "connect": 0.0002 * (n + 1)}
        if target.kind != "tcp" or success
        else {"connect": 0.5},
        debug=["debug line"],
        gauges={
            metrics.DNS_RCODE.name: 0.0,
            metrics.DNS_ANSWERS.name: 2.0,
            metrics.DNS_ANSWER_TTL.name: 60.0,
        }
        if target.kind == "dns"
        else {metrics.HTTP_STATUS.name: 200.0}
        if target.kind == "http" and success
        else {},
    )
