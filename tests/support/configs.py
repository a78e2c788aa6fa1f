"""Config texts built for tests, and the issues a loader reports for one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from exporter import config
from exporter.source import ConfigError

# A valid config with one http target: tests change a line of it and read the issues.
BASE = """\
vantage: eu
services:
  - name: shop
    regions:
      - {name: eu, role: primary, priority: 1}
      - {name: us, role: standby, priority: 2}
    images:
      - {name: slim, ref: example/shop:slim}
    targets:
      - name: eu-slim
        region: eu
        image: slim
        probe: {kind: http, url: "http://127.0.0.1:1/healthz"}
"""


def errors(tmp_path: Path, text: str) -> list[str]:
    """The issues loading `text` reports, with the file shown as c.yml."""
    path = tmp_path / "c.yml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return [str(i).replace(str(path), "c.yml") for i in info.value.issues]


def config_text(
    targets: dict[str, str],
    defaults: str = "",
    per_target: dict[str, str] | None = None,
) -> str:
    """One service, one region, one image; `targets` maps name -> URL."""
    extra = per_target or {}
    lines = [
        "vantage: test",
        f"defaults: {{{defaults}}}" if defaults else "",
        "services:",
        "  - name: svc",
        "    regions: [{name: r1, role: primary, priority: 1}]",
        "    images: [{name: i1, ref: example/svc:1}]",
        "    targets:",
    ]
    for name, url in targets.items():
        lines.append(
            f"      - {{name: {name}, region: r1, image: i1, "
            f'probe: {{kind: http, url: "{url}"}}{extra.get(name, "")}}}'
        )
    if not targets:
        lines[-1] = "    targets: []"
    return "\n".join(line for line in lines if line) + "\n"
