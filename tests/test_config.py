"""Config loading: valid files, and every validation rule with its exact error text."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter import config
from exporter.fields import format_duration, parse_duration
from exporter.probes import REGISTRY
from exporter.source import ConfigError
from tests.support.configs import BASE, errors

EXAMPLE = Path(__file__).parent.parent / "examples" / "config.yml"


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("5s", 5.0), ("250ms", 0.25), ("1m30s", 90.0), ("1h", 3600.0), (2, 2.0), (0.5, 0.5)],
    )
    def test_valid(self, text: str | float, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("5", "'5' is not a duration"),
            ("5 s", "'5 s' is not a duration"),
            ("s5", "'s5' is not a duration"),
            ("", "'' is not a duration"),
            (0, "must be greater than 0"),
            ("0s", "must be greater than 0"),
            (True, "must be a duration"),
            ([1], "must be a duration"),
        ],
    )
    def test_invalid(self, text: object, message: str) -> None:
        with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
            parse_duration(text)

    @pytest.mark.parametrize(("seconds", "text"), [(5.0, "5s"), (0.25, "250ms"), (1.5, "1.5s")])
    def test_format(self, seconds: float, text: str) -> None:
        assert format_duration(seconds) == text


class TestValid:
    def test_minimal(self, tmp_path: Path) -> None:
        (tmp_path / "c.yml").write_text(BASE)
        cfg = config.load(tmp_path / "c.yml")
        assert cfg.vantage == "eu"
        (target,) = cfg.targets
        assert (target.service, target.region, target.role, target.image) == (
            "shop",
            "eu",
            "primary",
            "slim",
        )
        assert (target.interval, target.timeout) == (5.0, 2.0)
        assert target.labels == ("shop", "eu", "primary", "slim", "eu-slim", "http", "eu")
        assert [(r.name, r.role, r.priority) for r in cfg.regions] == [
            ("eu", "primary", 1),
            ("us", "standby", 2),
        ]

    def test_example_file_is_valid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SHOP_PROBE_TOKEN", "s3cret-token")
        cfg = config.load(EXAMPLE)
        assert cfg.vantage == "eu-west"
        assert {t.kind for t in cfg.targets} == {"http", "tcp"}
        control = [t for t in cfg.targets if t.role == "control"]
        assert [t.name for t in control] == ["control-eu-west"]
        assert control[0].service == control[0].region == control[0].image == ""
        us = next(t for t in cfg.targets if t.name == "us-east-slim")
        assert (us.interval, us.timeout) == (10.0, 3.0)

    def test_secret_not_in_repr(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TOKEN", "hunter2-secret")
        text = BASE.replace(
            'url: "http://127.0.0.1:1/healthz"}',
            'url: "http://127.0.0.1:1/healthz", bearer_token: {env: TOKEN}}',
        )
        (tmp_path / "c.yml").write_text(text)
        cfg = config.load(tmp_path / "c.yml")
        assert "hunter2" not in repr(cfg)
        assert "hunter2" not in str(cfg.targets[0].prepared)

    def test_secret_from_file(self, tmp_path: Path) -> None:
        (tmp_path / "pw").write_text("filepass\n")
        text = BASE.replace(
            'url: "http://127.0.0.1:1/healthz"}',
            'url: "http://127.0.0.1:1/healthz", basic_auth: {username: u, password: {file: pw}}}',
        )
        (tmp_path / "c.yml").write_text(text)
        prepared = config.load(tmp_path / "c.yml").targets[0].prepared
        assert dict(prepared.secret_headers)["Authorization"].get_secret_value() == (
            "Basic dTpmaWxlcGFzcw=="
        )


# (description, config text, exact errors). Line numbers point at the offending key or value.
INVALID = [
    (
        "unknown top-level key, and a typo inside a target",
        BASE + "scrape: yes\n",
        ["c.yml:14: scrape: unknown key"],
    ),
    (
        "missing vantage and unknown probe key",
        BASE.replace("vantage: eu\n", "").replace('url: "http', 'uri: "http'),
        [
            "c.yml:1: vantage: required key is missing",
            "c.yml:12: services[0].targets[0].probe.uri: unknown key",
            "c.yml:12: services[0].targets[0].probe.url: required key is missing",
        ],
    ),
    (
        "timeout not below interval, on a target and in defaults",
        BASE.replace("vantage: eu\n", "vantage: eu\ndefaults: {interval: 2s, timeout: 2s}\n")
        + "      - {name: b, region: eu, image: slim, interval: 1s, timeout: 1500ms,"
        " probe: {kind: tcp, address: 'h:1'}}\n",
        [
            "c.yml:2: defaults.timeout: timeout (2s) must be below interval (2s)",
            "c.yml:15: services[0].targets[1].timeout: timeout (1.5s) must be below interval (1s)",
        ],
    ),
    (
        "references to unknown region and image",
        BASE.replace(
            "        region: eu\n        image: slim", "        region: mars\n        image: fat"
        ),
        [
            "c.yml:11: services[0].targets[0].region: unknown region 'mars' (known: eu, us)",
            "c.yml:12: services[0].targets[0].image: unknown image 'fat' (known: slim)",
        ],
    ),
    (
        "duplicate names, two primaries, duplicate priority",
        BASE.replace(
            "{name: us, role: standby, priority: 2}", "{name: eu, role: primary, priority: 1}"
        )
        + "      - {name: eu-slim, region: eu, image: slim, probe: {kind: tcp, address: 'h:1'}}\n",
        [
            "c.yml:6: services[0].regions[1].name: region name 'eu' is already used",
            "c.yml:6: services[0].regions[1].priority: priority 1 is already used by region 'eu'",
            "c.yml:6: services[0].regions[1].role: only one region per service may be primary",
            "c.yml:14: services[0].targets[1].name: target name 'eu-slim' is already used at "
            "services[0].targets[0]",
        ],
    ),
    (
        "no primary region",
        BASE.replace("role: primary", "role: standby"),
        ["c.yml:4: services[0].regions: exactly one region must have role primary"],
    ),
    (
        "bad values: role, priority, duration, url scheme, probe kind",
        BASE.replace("role: standby", "role: backup")
        .replace("priority: 2", "priority: 0")
        .replace("        image: slim\n", "        image: slim\n        interval: soon\n", 1)
        .replace('url: "http://127.0.0.1:1/healthz"', 'url: "ftp://x/"')
        + "      - {name: c, region: eu, image: slim, probe: {kind: smtp}}\n",
        [
            "c.yml:6: services[0].regions[1].priority: Input should be greater than or equal to 1",
            "c.yml:6: services[0].regions[1].role: Input should be 'primary' or 'standby'",
            "c.yml:13: services[0].targets[0].interval: 'soon' is not a duration "
            "(use e.g. 5s, 250ms, 1m30s)",
            "c.yml:14: services[0].targets[0].probe.url: "
            "must be an absolute http:// or https:// URL",
            "c.yml:15: services[0].targets[1].probe.kind: unknown probe kind 'smtp' (known: "
            + ", ".join(sorted(REGISTRY))
            + ")",
        ],
    ),
    (
        "credentials inline in the URL, secret env missing, bad regex",
        BASE.replace('"http://127.0.0.1:1/healthz"', '"http://u:pw@h/"')
        + "      - name: d\n        region: eu\n        image: slim\n"
        "        probe: {kind: http, url: 'http://h/', bearer_token: {env: NOPE_NOT_SET_X}}\n"
        "      - name: e\n        region: eu\n        image: slim\n"
        "        probe: {kind: http, url: 'http://h/', body_must_match: ['ok', '(']}\n",
        [
            "c.yml:13: services[0].targets[0].probe.url: must not contain credentials; "
            "use basic_auth with env or file",
        ],
    ),
    (
        "YAML syntax error",
        "vantage: eu\nservices: [\n  {name: x\n",
        ["c.yml:4: YAML syntax error: did not find expected ',' or '}'"],
    ),
    (
        "duplicate YAML keys",
        BASE.replace("vantage: eu\n", "vantage: eu\nvantage: us\n"),
        ["c.yml:2: vantage: duplicate key"],
    ),
    (
        "not a mapping",
        "- a\n- b\n",
        ["c.yml:1: the config must be a mapping (vantage, services, …)"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert errors(tmp_path, text) == expected


def test_prepare_errors_reported_after_schema_passes(tmp_path: Path) -> None:
    text = (
        BASE + "      - name: d\n        region: eu\n        image: slim\n"
        "        probe: {kind: http, url: 'http://h/', bearer_token: {env: NOPE_NOT_SET_X}}\n"
        "      - name: e\n        region: eu\n        image: slim\n"
        "        probe: {kind: http, url: 'http://h/', body_must_match: ['ok', '(']}\n"
    )
    assert errors(tmp_path, text) == [
        "c.yml:17: services[0].targets[1].probe.bearer_token: "
        "environment variable NOPE_NOT_SET_X is not set",
        "c.yml:21: services[0].targets[2].probe.body_must_match[1]: "
        "invalid regular expression: missing ), unterminated subpattern at position 0",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "absent.yml")
    assert (
        str(info.value) == f"{tmp_path}/absent.yml: cannot read config: No such file or directory"
    )


def test_rotated_secret_changes_the_target_but_not_its_repr(tmp_path: Path) -> None:
    """A reload compares targets: a new password must restart the target with it."""
    text = BASE.replace(
        'url: "http://127.0.0.1:1/healthz"}',
        'url: "http://127.0.0.1:1/healthz", basic_auth: {username: u, password: {file: pw}}}',
    )
    (tmp_path / "c.yml").write_text(text)
    (tmp_path / "pw").write_text("first-secret")
    first = config.load(tmp_path / "c.yml").targets[0]
    same = config.load(tmp_path / "c.yml").targets[0]
    (tmp_path / "pw").write_text("second-secret")
    rotated = config.load(tmp_path / "c.yml").targets[0]
    assert first == same
    assert first != rotated
    assert first.secrets
    assert first.secrets != rotated.secrets
    assert "second-secret" not in repr(rotated)


def test_target_without_image_counts_for_the_region_only(tmp_path: Path) -> None:
    text = BASE + (
        "      - {name: eu-db, region: eu, probe: {kind: tcp, address: '127.0.0.1:5432'}}\n"
    )
    (tmp_path / "c.yml").write_text(text)
    db = next(t for t in config.load(tmp_path / "c.yml").targets if t.name == "eu-db")
    assert (db.region, db.role, db.image) == ("eu", "primary", "")


def test_targets_with_the_same_tls_settings_share_one_context(tmp_path: Path) -> None:
    """Each context holds the whole CA store; one per target would cost ~0.9 MiB each."""
    text = BASE.replace('"http://127.0.0.1:1/healthz"', '"https://127.0.0.1:1/healthz"') + (
        "      - {name: b, region: eu, image: slim, probe: {kind: http, url: 'https://h/'}}\n"
        "      - {name: c, region: eu, image: slim, "
        "probe: {kind: http, url: 'https://h/', tls: {verify: false}}}\n"
    )
    (tmp_path / "c.yml").write_text(text)
    a, b, c = (t.prepared.ssl for t in config.load(tmp_path / "c.yml").targets)
    assert a is b
    assert a is not c
    assert c.verify_mode.name == "CERT_NONE"
    again = config.load(tmp_path / "c.yml").targets[0].prepared.ssl
    assert again is a


def test_default_timeout_must_fit_a_shorter_default_interval(tmp_path: Path) -> None:
    text = BASE.replace("vantage: eu\n", "vantage: eu\ndefaults: {interval: 1s}\n")
    assert errors(tmp_path, text) == [
        "c.yml:2: defaults.interval: timeout (2s) must be below interval (1s)"
    ]


def test_the_timeout_rule_uses_the_schemas_durations_and_defaults(tmp_path: Path) -> None:
    # An invalid duration is the schema's to report, once; the cross-field rule stays quiet on
    # it. A valid one is checked even when another key of the same target is invalid, against
    # the schema's default interval when the target does not set one.
    text = BASE + (
        "      - {name: b, region: eu, image: slim, interval: 5x, timeout: 9s,"
        " probe: {kind: tcp, address: 'h:1'}}\n"
        "      - {name: c, region: eu, image: slim, timeout: 5s, colour: red,"
        " probe: {kind: tcp, address: 'h:1'}}\n"
    )
    issues = errors(tmp_path, text)
    assert len(issues) == 3, issues
    assert "services[0].targets[1].interval: '5x' is not a duration" in issues[0]
    assert issues[1].endswith("services[0].targets[2].colour: unknown key")
    assert issues[2].endswith(
        "services[0].targets[2].timeout: timeout (5s) must be below interval (5s)"
    )


def test_tcp_tls_config_without_tls_is_an_error(tmp_path: Path) -> None:
    text = BASE + (
        "      - {name: t, region: eu, image: slim, probe: {kind: tcp, address: 'h:443',"
        " tls_config: {ca_file: ca.pem}}}\n"
    )
    assert errors(tmp_path, text) == [
        "c.yml:14: services[0].targets[1].probe: tls_config is set but tls is false; add tls: true"
    ]


@pytest.mark.parametrize(
    "text",
    [
        BASE,
        BASE + "      - {name: x, region: eu, image: slim, probe: {kind: tcp, address: 'h:1'},"
        " timeout: 0x10, interval: !!str 5s, extra: [1, {a: 2024-01-02}], extra: ~}\n",
        BASE.replace("vantage: eu", "vantage: [" * 70 + "]" * 70),
        BASE.replace("vantage: eu", "vantage: 2024-13-45"),
        BASE + "      - {name: y, region: eu, image: slim, probe: {kind: http, url: 'h'}\n",
        BASE + "---\nvantage: us\n",
        BASE + "? [a, b]\n: 1\n",
    ],
    ids=["valid", "tags-and-duplicates", "too-deep", "bad-value", "syntax", "two-docs", "complex"],
)
def test_event_reader_and_node_tree_agree(text: str) -> None:
    """Plain documents are read event by event, documents with anchors through the node tree:
    the same data, lines, issues and errors either way (an unused anchor takes the other path)."""

    def read(text: str) -> object:
        try:
            src = config.read_yaml(text, "c.yml")
        except ConfigError as exc:
            return str(exc)
        return (src.data, src.lines, src.issues)

    anchored = text.replace("vantage: ", "vantage: &unused ", 1)
    plain, tree = read(text), read(anchored)
    if isinstance(plain, tuple) and isinstance(tree, tuple):
        assert plain[0] == tree[0]
        assert plain[1] == tree[1]
        assert plain[2] == tree[2]
    else:
        assert plain == tree


def test_equal_immutable_values_are_shared_across_targets(tmp_path: Path) -> None:
    """Per-target runtime objects keep one copy of what is equal across targets."""
    text = BASE + "".join(
        f"      - {{name: n{i}, region: eu, image: slim, "
        f"probe: {{kind: http, url: 'http://127.0.0.1:{i + 1}/x'}}}}\n"
        for i in range(2)
    )
    (tmp_path / "c.yml").write_text(text)
    _, a, b = config.load(tmp_path / "c.yml").targets
    assert a.region is b.region
    assert a.settings.kind is b.settings.kind
    assert a.settings.model_fields_set is b.settings.model_fields_set
    assert a.prepared.headers is b.prepared.headers
    assert a.prepared.url != b.prepared.url
    assert a.prepared.request != b.prepared.request
    # What a reload compares is unchanged: the same file loads to equal targets.
    assert config.load(tmp_path / "c.yml").targets[1:] == (a, b)


# -- hardening: addresses, secret-looking names, encodings ---------------------------------

IPV6_PROBES = {
    "tcp": "{kind: tcp, address: '2001:db8::1:443'}",
    "tcp-loopback": "{kind: tcp, address: '::1:5432'}",
    "tcp-bare": "{kind: tcp, address: '::1'}",
    "postgres": "{kind: postgres, dsn_env: HARDENING_IPV6_DSN}",
}


@pytest.mark.parametrize("kind", sorted(IPV6_PROBES))
def test_unbracketed_ipv6_is_refused_with_the_bracket_hint(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARDENING_IPV6_DSN", "postgresql://u@2001:db8::1:5432/db")
    text = BASE + "      - name: v6\n        region: eu\n        image: slim\n"
    text += f"        probe: {IPV6_PROBES[kind]}\n"
    [issue] = errors(tmp_path, text)
    assert issue.startswith("c.yml:17: services[0].targets[1].probe")
    assert "[2001:db8::1]:port" in issue


def test_bracketed_ipv6_is_split_right() -> None:
    from exporter.probes.tcp import split_address

    assert split_address("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert split_address("[::1]:1") == ("::1", 1)


def test_unbracketed_ipv6_docker_endpoint_and_listen_address(tmp_path: Path) -> None:
    from exporter.cli import parse_listen

    text = BASE.replace(
        "{name: us, role: standby, priority: 2}",
        "{name: us, role: standby, priority: 2, docker: {host: 'tcp://2001:db8::5:2376'}}",
    )
    [issue] = errors(tmp_path, text)
    assert "services[0].regions[1].docker.host" in issue
    assert "[2001:db8::1]:port" in issue
    with pytest.raises(ValueError, match=r"\[2001:db8::1\]:port"):
        parse_listen("::1:10077")
    assert parse_listen("[::1]:10077") == ("::1", 10077)
    assert parse_listen(":10077") == (None, 10077)


SECRET_NAMES = [
    ("dsn_env", "postgresql://probe:hunter22@db.internal:5432/shop"),
    ("dsn_env", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("dsn_file", "postgres://probe:hunter22@db/shop"),
    ("dsn_file", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"),
]


@pytest.mark.parametrize(("field", "value"), SECRET_NAMES)
def test_a_secret_written_as_a_name_is_refused_unquoted(
    tmp_path: Path, field: str, value: str
) -> None:
    text = BASE + "      - name: pg\n        region: eu\n        image: slim\n"
    text += f"        probe: {{kind: postgres, {field}: '{value}'}}\n"
    [issue] = errors(tmp_path, text)
    assert f"services[0].targets[1].probe.{field}" in issue
    assert "looks like a secret" in issue
    assert "hunter22" not in issue
    assert value not in issue
    assert value[8:20] not in issue


def test_secret_names_in_http_and_tls_fields(tmp_path: Path) -> None:
    token = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
    text = BASE.replace(
        'url: "http://127.0.0.1:1/healthz"}',
        f'url: "http://127.0.0.1:1/healthz", bearer_token: {{env: "{token}"}},'
        f' tls: {{ca_file: "{token}"}}}}',
    )
    issues = errors(tmp_path, text)
    assert len(issues) == 2, issues
    assert all("looks like a secret" in i and token not in i for i in issues)


def test_ordinary_names_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PROBE_TOKEN_EU_WEST_2", "x")
    text = BASE.replace(
        'url: "http://127.0.0.1:1/healthz"}',
        'url: "http://127.0.0.1:1/healthz", bearer_token: {env: SHOP_PROBE_TOKEN_EU_WEST_2}}',
    )
    path = tmp_path / "c.yml"
    path.write_text(text)
    assert config.load(path).targets


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"vantage: eu\nservices:\n  - name: sh\xffop\n", "c.yml:3:13"),
        (b"\xfe", "c.yml:1:1"),
        # Column counts characters, not bytes: the multi-byte é before the bad byte is one.
        ("vantage: é".encode() + b"\x80\n", "c.yml:1:11"),
        (b"a: 1\r\nb: \xc3\x28\n", "c.yml:2:4"),
    ],
)
def test_non_utf8_config_names_line_and_column(tmp_path: Path, data: bytes, where: str) -> None:
    path = tmp_path / "c.yml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    [issue] = info.value.issues
    assert (
        str(issue).replace(str(path), "c.yml").startswith(f"{where}: cannot read config: not UTF-8")
    )


def test_dns_settings(tmp_path: Path) -> None:
    ok = BASE + (
        "      - name: d\n        region: eu\n"
        "        probe: {kind: dns, server: '[::1]:5353', name: shop.example., type: AAAA}\n"
    )
    path = tmp_path / "ok.yml"
    path.write_text(ok)
    cfg = config.load(path)
    (target,) = [t for t in cfg.targets if t.kind == "dns"]
    assert (target.prepared.host, target.prepared.port) == ("::1", 5353)
    # Schema errors first; prepare errors (the regex) once the schema passes.
    bad = "        probe: {kind: dns, server: 'h', name: x., type: PTR}\n"
    assert errors(tmp_path, BASE + "      - name: e\n        region: eu\n" + bad) == [
        "c.yml:16: services[0].targets[1].probe.server: must be host:port "
        "(write an IPv6 address in brackets: [2001:db8::1]:port)",
        "c.yml:16: services[0].targets[1].probe.type: "
        "Input should be 'A', 'AAAA', 'CNAME', 'MX', 'TXT', 'SRV', 'NS' or 'SOA'",
    ]
    regex = "        probe: {kind: dns, server: 'h:53', name: x., answers_must_match: ['(']}\n"
    assert errors(tmp_path, BASE + "      - name: d\n        region: eu\n" + regex) == [
        "c.yml:16: services[0].targets[1].probe.answers_must_match[0]: "
        "invalid regular expression: missing ), unterminated subpattern at position 0"
    ]


def test_dns_regions(tmp_path: Path) -> None:
    def target(regions: str) -> str:
        return BASE + (
            "      - name: d\n        region: eu\n"
            f"        probe: {{kind: dns, server: 'h:53', name: x., regions: {regions}}}\n"
        )

    path = tmp_path / "ok.yml"
    path.write_text(target("{eu: [192.0.2.0/28, 2001:db8::1], us: [lb.us.example., 198.51.100.7]}"))
    (dns_target,) = [t for t in config.load(path).targets if t.kind == "dns"]
    assert dns_target.prepared.region_names == ("eu", "us")
    where = "c.yml:16: services[0].targets[1].probe.regions"
    assert errors(tmp_path, target("{eu: [192.0.2.0/24], us: [192.0.2.128/25]}")) == [
        f"{where}.us[0]: 192.0.2.128/25 overlaps 192.0.2.0/24 of region 'eu'"
    ]
    assert errors(tmp_path, target("{eu: [lb.example.], us: [LB.example.]}")) == [
        f"{where}.us[0]: LB.example. is also listed for region 'eu'"
    ]
    assert errors(tmp_path, target("{eu: [lb.example]}")) == [
        f"{where}.eu[0]: 'lb.example' is not an address, a CIDR or an absolute name (ending in '.')"
    ]
    assert errors(tmp_path, target("{eu: []}")) == [f"{where}.eu: lists no address, CIDR or name"]
    assert errors(tmp_path, target("{eu: [192.0.2.1], ap: [192.0.2.2]}")) == [
        f"{where}.ap: 'ap' is not a region of service 'shop' (eu, us)"
    ]
