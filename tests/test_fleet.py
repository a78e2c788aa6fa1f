"""Fleet scale on the exporter side: templates, file discovery, user labels, maintenance and
sharding (docs/config.md). Discovery is driven by `Engine.poll_discovery`, one watch step at a
time, so that no test waits for the background timer."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from exporter import config, exposition, templates
from exporter.engine import Engine
from exporter.model import Shard
from exporter.source import ConfigError
from tests.conftest import MakeClient
from tests.support.fuzz import FUZZ, check_parse, dump, mutate, paths, values

BASE = """\
vantage: eu
services:
  - name: shop
    labels: {team: payments, tier: gold}
    regions:
      - {name: eu-west, role: primary, priority: 1}
      - {name: us-east, role: standby, priority: 2}
    images:
      - {name: slim, ref: "shop:slim"}
      - {name: fat, ref: "shop:fat"}
"""

TEMPLATE = (
    BASE
    + """\
    templates:
      - name: "{image}-{region}-{endpoint}"
        dimensions:
          endpoint: [healthz, cart]
        probe:
          kind: http
          url: "https://{image}.{region}.shop.example.com/{endpoint}?q={{x}}"
        exclude:
          - {region: us-east, image: fat}
        overrides:
          - match: {endpoint: cart}
            interval: 30s
            labels: {tier: silver}
      - name: "db-{region}"
        images: []
        probe: {kind: tcp, address: "db.{region}.example.com:5432"}
"""
)


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def issues(path: Path, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config.load(path, **kw)
    return [str(i) for i in err.value.issues]


# -- templates ------------------------------------------------------------------------------


def test_template_expands_regions_images_and_dimensions(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, TEMPLATE))
    by_name = {t.name: t for t in cfg.targets}
    # 2 regions × 2 images × 2 endpoints, less the excluded (us-east, fat) pair; 2 db targets.
    assert sorted(by_name) == sorted(
        [
            *(f"{i}-eu-west-{e}" for i in ("slim", "fat") for e in ("healthz", "cart")),
            "slim-us-east-healthz",
            "slim-us-east-cart",
            "db-eu-west",
            "db-us-east",
        ]
    )
    assert cfg.expanded == 8
    cart = by_name["fat-eu-west-cart"]
    assert cart.settings.url == "https://fat.eu-west.shop.example.com/cart?q={x}"
    assert (cart.region, cart.image, cart.role, cart.interval) == ("eu-west", "fat", "primary", 30)
    assert dict(cart.user_labels) == {"team": "payments", "tier": "silver"}
    assert by_name["slim-eu-west-healthz"].interval == 5.0
    db = by_name["db-us-east"]
    assert (db.image, db.kind, db.settings.address) == ("", "tcp", "db.us-east.example.com:5432")


@pytest.mark.parametrize(
    ("template", "line", "path", "message"),
    [
        (
            '- {name: "{image}", probe: {kind: http, url: "http://{imag}/"}}',
            12,
            "services[0].templates[0].probe.url",
            "unknown placeholder {imag}",
        ),
        (
            '- {name: "x-{region}", probe: {kind: http, url: "ftp://{region}/"}}',
            12,
            "services[0].templates[0].probe.url",
            "absolute http:// or https:// URL (in the expansion region=eu-west image=slim)",
        ),
        (
            '- {name: "same", images: [], probe: {kind: tcp, address: "h:1"}}',
            12,
            "services[0].templates[0].name",
            "target name 'same' is already used at services[0].templates[0] (region=eu-west)",
        ),
        (
            '- {name: "{region}", regions: [mars], probe: {kind: tcp, address: "h:1"}}',
            12,
            "services[0].templates[0].regions[0]",
            "unknown region 'mars'",
        ),
        (
            '- {name: "{region}", exclude: [{region: mars}], probe: {kind: tcp, address: "h:1"}}',
            12,
            "services[0].templates[0].exclude[0]",
            "matches no expansion",
        ),
        (
            '- {name: "{x}", dimensions: {region: [a]}, probe: {kind: tcp, address: "h:1"}}',
            12,
            "services[0].templates[0].dimensions.region",
            "built-in placeholder",
        ),
        (
            '- {name: "{image}-{region}", probe: {kind: tcp, address: "h:1", port: 2}}',
            12,
            "services[0].templates[0].probe.port",
            "unknown key (in the expansion region=eu-west image=slim)",
        ),
    ],
)
def test_template_errors_point_at_the_template(
    tmp_path: Path, template: str, line: int, path: str, message: str
) -> None:
    file = write(tmp_path, BASE + "    templates:\n      " + template + "\n")
    found = issues(file)
    want = f"{file}:{line}: {path}: "
    assert any(i.startswith(want) and message in i for i in found), found


def test_check_config_prints_the_expanded_count_and_targets(tmp_path: Path) -> None:
    file = write(tmp_path, TEMPLATE)
    run = [sys.executable, "-m", "exporter", "check-config"]
    out = subprocess.run([*run, str(file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "8 target(s), 8 expanded from templates" in out.stdout
    out = subprocess.run([*run, "--expand", str(file)], capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()[1:]
    assert len(lines) == 8
    assert (
        "shop\tfat-eu-west-cart\tregion=eu-west\timage=fat\t"
        # describe() leaves the query out: it may carry a token.
        "http: GET https://fat.eu-west.shop.example.com/cart" in lines
    )


def templated(data: st.DataObject) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(TEMPLATE)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        where = [p for p in paths(doc) if p[:3] == ("services", 0, "templates")] or [()]
        path = data.draw(st.sampled_from(where), label="path")
        how = data.draw(st.sampled_from(["delete", "replace", "wrap", "duplicate", "add"]))
        doc = mutate(doc, path, how, data.draw(values, label="value"))
    return doc


@FUZZ
@given(data=st.data())
def test_fuzzed_templates_never_raise_anything_but_config_errors(data: st.DataObject) -> None:
    check_parse(dump(templated(data)))


placeholder_text = st.text(st.sampled_from("{}ab_ region image"), max_size=12)


@FUZZ
@given(text=placeholder_text, value=st.one_of(placeholder_text, st.integers(), st.none()))
def test_fuzzed_placeholders(text: str, value: Any) -> None:
    doc: dict[str, Any] = yaml.safe_load(TEMPLATE)
    tpl = doc["services"][0]["templates"][0]
    tpl["name"] = "{image}-{region}-{endpoint}" + text
    tpl["probe"]["url"] = "https://" + text
    tpl["dimensions"]["endpoint"].append(value)
    check_parse(dump(copy.deepcopy(doc)))


# -- file discovery ---------------------------------------------------------------------------

DISCOVERY = (
    BASE
    + """\
    templates:
      - name: "{image}-{region}-{address}"
        files: [sd/*.json, sd/*.yml]
        probe: {kind: http, url: "http://{address}/healthz?zone={zone}"}
"""
)


def sd_group(region: str, *addresses: str, image: str = "slim") -> dict[str, Any]:
    return {"targets": list(addresses), "labels": {"region": region, "image": image, "zone": "a"}}


async def test_file_sd_changes_apply_on_the_next_poll_and_a_bad_file_keeps_its_targets(
    tmp_path: Path,
) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "eu.json").write_text(json.dumps([sd_group("eu-west", "10.0.0.1:80")]))
    (sd / "us.yml").write_text(yaml.safe_dump([sd_group("us-east", "10.1.0.1:80")]))
    path = write(tmp_path, DISCOVERY)
    engine = Engine(path=path)
    try:
        engine.start(config.load(path, None, engine.sd_cache))

        def names() -> set[str]:
            assert engine.config is not None
            return {t.name for t in engine.config.targets}

        assert names() == {"slim-eu-west-10.0.0.1:80", "slim-us-east-10.1.0.1:80"}
        assert engine.config is not None
        url = {t.name: t.settings.url for t in engine.config.targets}["slim-eu-west-10.0.0.1:80"]
        assert url == "http://10.0.0.1:80/healthz?zone=a"
        assert await engine.poll_discovery() is None  # nothing changed: no reload

        (sd / "eu.json").write_text(
            json.dumps([sd_group("eu-west", "10.0.0.1:80", "10.0.0.2:80", image="fat")])
        )
        assert await engine.poll_discovery() is True
        assert names() == {
            "fat-eu-west-10.0.0.1:80",
            "fat-eu-west-10.0.0.2:80",
            "slim-us-east-10.1.0.1:80",
        }

        # One bad file keeps its last good targets; the other file's change still applies.
        (sd / "eu.json").write_text('[{"targets": ["x"], "labels": {"region": "mars"}}]')
        (sd / "us.yml").write_text(yaml.safe_dump([sd_group("us-east", "10.1.0.9:80")]))
        assert await engine.poll_discovery() is True
        assert names() == {
            "fat-eu-west-10.0.0.1:80",
            "fat-eu-west-10.0.0.2:80",
            "slim-us-east-10.1.0.9:80",
        }
        # A new file that was never good is kept out; the others stay.
        (sd / "new.json").write_text("{not json")
        assert await engine.poll_discovery() is True
        assert len(names()) == 3
        assert engine.config is not None
        assert any("new.json" in w and "not used" in w for w in engine.config.warnings)
        # A removed file's targets go.
        (sd / "us.yml").unlink()
        assert await engine.poll_discovery() is True
        assert names() == {"fat-eu-west-10.0.0.1:80", "fat-eu-west-10.0.0.2:80"}
    finally:
        await engine.aclose()


def test_file_sd_errors_in_a_template_name_the_template(tmp_path: Path) -> None:
    (tmp_path / "sd").mkdir()
    text = DISCOVERY.replace(
        "files: [sd/*.json, sd/*.yml]", "files: [sd/*.json]\n        regions: [eu-west]"
    )
    found = issues(write(tmp_path, text))
    assert any("services[0].templates[0].regions" in i and "from `files`" in i for i in found)


# -- user labels, maintenance, shard identity on /metrics ------------------------------------


def test_reserved_and_malformed_label_names_are_refused(tmp_path: Path) -> None:
    for name, message in [
        ("job", "reserved"),
        ("target_region", "reserved"),
        ("__x", "not starting with a digit or __"),
        ("1x", "not starting with a digit or __"),
        ("te-am", "letters, digits and _"),
    ]:
        file = write(tmp_path, BASE.replace("team: payments", f"{name}: payments"))
        found = issues(file)
        assert any(i.startswith(f"{file}:4: services[0].labels: ") and message in i for i in found)


async def metrics_text(client: TestClient) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return await resp.text()


async def test_labels_maintenance_and_shard_on_metrics(
    tmp_path: Path, exporter_client: MakeClient
) -> None:
    text = TEMPLATE.replace("priority: 2}", "priority: 2, maintenance: true}")
    cfg = config.load(write(tmp_path, text), Shard(1, 2))
    client = await exporter_client(cfg)
    body = await metrics_text(client)
    assert 'failover_service_info{service="shop",team="payments",tier="gold"} 1' in body
    assert 'failover_region_maintenance{service="shop",target_region="us-east"} 1' in body
    assert 'failover_region_maintenance{service="shop",target_region="eu-west"} 0' in body
    assert 'failover_exporter_shard_info{vantage="eu",shard="1",shards="2"} 1' in body
    info = [line for line in body.splitlines() if line.startswith("failover_target_info{")]
    assert len(info) == len(cfg.targets)
    # User labels never ride on the per-probe series.
    probes = [line for line in body.splitlines() if line.startswith("failover_probes_total{")]
    assert probes
    assert not any("team=" in line for line in probes)

    # Run-time maintenance: on, off, back to the config's flag.
    resp = await client.post("/-/maintenance?service=shop&region=eu-west&state=on")
    assert resp.status == 200, await resp.text()
    assert 'target_region="eu-west"} 1' in await metrics_text(client)
    status = await (await client.get("/")).text()
    assert "eu-west <small>primary · priority 1 · maintenance" in status
    await client.post("/-/maintenance?service=shop&region=us-east&state=off")
    assert 'failover_region_maintenance{service="shop",target_region="us-east"} 0' in (
        await metrics_text(client)
    )
    await client.post("/-/maintenance?service=shop&region=us-east&state=config")
    assert 'failover_region_maintenance{service="shop",target_region="us-east"} 1' in (
        await metrics_text(client)
    )
    assert (await client.post("/-/maintenance?service=shop&region=mars")).status == 404
    assert (await client.post("/-/maintenance?service=shop&region=eu-west&state=x")).status == 400


def test_fleet_series_pass_promtool(tmp_path: Path) -> None:
    from tests.tools import need

    cfg = config.load(write(tmp_path, TEMPLATE), Shard(0, 3))
    text = exposition.fleet_lines(cfg, {("shop", "eu-west"): True})
    out = subprocess.run(
        [need("promtool"), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- sharding ---------------------------------------------------------------------------------


def test_shards_partition_the_targets_and_keep_control_targets(tmp_path: Path) -> None:
    text = TEMPLATE.replace(
        "services:", 'control:\n  - {name: ctl, probe: {kind: tcp, address: "h:1"}}\nservices:'
    )
    file = write(tmp_path, text)
    whole = {t.name for t in config.load(file).targets}
    parts = [{t.name for t in config.load(file, Shard(i, 3)).targets} - {"ctl"} for i in range(3)]
    assert set().union(*parts) == whole - {"ctl"}
    assert sum(len(p) for p in parts) == len(whole) - 1
    for i in range(3):
        assert "ctl" in {t.name for t in config.load(file, Shard(i, 3)).targets}


def test_adding_a_shard_moves_about_one_in_n() -> None:
    keys = [f"target-{i}" for i in range(3000)]
    before = [config.owner(k, 4) for k in keys]
    after = [config.owner(k, 5) for k in keys]
    moved = [b != a for b, a in zip(before, after, strict=True)]
    # Only to the new shard, and about 1/5 of them (600 expected; bounds far outside noise).
    assert all(a == 4 for a, m in zip(after, moved, strict=True) if m)
    assert 480 < sum(moved) < 720
    # Balanced: each of 5 shards holds about 600.
    assert all(480 < after.count(i) < 720 for i in range(5))
    # Stable: a fixed key's owner never changes between versions or processes.
    assert config.owner("shop/eu-slim", 2) == config.owner("shop/eu-slim", 2)


@pytest.mark.parametrize("text", ["1", "2/2", "a/b", "-1/2", "0/0", "0/2000"])
def test_bad_shard_arguments(text: str) -> None:
    with pytest.raises(ValueError, match="--shard"):
        Shard.parse(text)
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--shard", text, "x.yml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--shard" in out.stderr
    assert "Traceback" not in out.stderr


def test_templates_cap_the_number_of_expansions(tmp_path: Path) -> None:
    many = ", ".join(str(i) for i in range(templates.MAX_EXPANSIONS // 4 + 1))
    text = BASE + (
        '    templates:\n      - name: "{image}-{region}-{n}"\n'
        f"        dimensions: {{n: [{many}]}}\n"
        '        probe: {kind: tcp, address: "h:1"}\n'
    )
    found = issues(write(tmp_path, text))
    assert any("more than 100000 targets" in i for i in found)


def test_a_huge_product_is_refused_without_being_built(tmp_path: Path) -> None:
    # 2 regions × 2 images × 1000³ cells: refused after the first 100,001.
    values = ", ".join(str(i) for i in range(1000))
    text = BASE + (
        '    templates:\n      - name: "{image}-{region}-{a}-{b}-{c}"\n'
        f"        dimensions: {{a: [{values}], b: [{values}], c: [{values}]}}\n"
        '        probe: {kind: tcp, address: "h:1"}\n'
    )
    found = issues(write(tmp_path, text))
    assert any("more than 100000 targets" in i for i in found)
