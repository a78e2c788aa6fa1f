"""Generate the Grafana dashboards of the bundle from code.

    python grafana/generate.py            # write grafana/dashboards/*.json
    python grafana/generate.py --check    # exit 1 if the committed JSON differs

The dashboards are modules of grafana/failover_dashboards/ (one per dashboard; `panels` holds the
thresholds, label filters and builders they share). Built with grafana-foundation-sdk (pinned in
pyproject's `test` extra: unpinned, pip resolves to its Grafana 10.1 build). The queries read the
recording rules of prometheus/rules where one exists, so a dashboard shows exactly what the alerts
judge; thresholds are the alert thresholds and budgets of prometheus/ (tests/grafana checks every
query against a real Prometheus).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The dashboard modules live next to this script; it runs as a file (make dashboards, tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from failover_dashboards import exporter_health, images, overview, target
from failover_dashboards.panels import UIDS
from grafana_foundation_sdk.cog.encoder import JSONEncoder

OUT = Path(__file__).resolve().parent / "dashboards"


# --- output -----------------------------------------------------------------------------------

BUILDERS = {
    "overview": overview.overview,
    "images": images.images,
    "target": target.target,
    "exporter": exporter_health.exporter,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for key, build in BUILDERS.items():
        doc = json.loads(JSONEncoder().encode(build()))
        # Stable panel ids in layout order: Grafana needs them unique within a dashboard.
        for n, panel in enumerate(doc["panels"], start=1):
            panel["id"] = n
        out[f"{UIDS[key]}.json"] = (
            json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if the files differ")
    args = ap.parse_args(argv)
    rendered = render()
    stale = [
        n
        for n, text in rendered.items()
        if not (OUT / n).is_file() or (OUT / n).read_text() != text
    ]
    if args.check:
        for n in stale:
            print(f"stale: grafana/dashboards/{n} (run make dashboards)", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for n in stale:
        (OUT / n).write_text(rendered[n])
        print(f"wrote grafana/dashboards/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
