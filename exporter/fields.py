"""Field types shared by the config schema and the probe settings models."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, quote_plus

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    model_validator,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Model(BaseModel):
    """Input model base: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Prometheus-style duration string ("250ms", "5s", "1m30s")."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 5s or 250ms")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"{value!r} is not a duration (use e.g. 5s, 250ms, 1m30s)")
    else:
        raise ValueError("must be a duration such as 5s or 250ms")
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration")
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _check_name(value: str) -> str:
    if not value or len(value) > 128:
        raise ValueError("must be 1 to 128 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


# Names become label values and appear on the status page (escaped there), so any printable
# text is allowed; length and control characters are the only limits.
Name = Annotated[str, AfterValidator(_check_name)]


IPV6_HINT = "write an IPv6 address in brackets: [2001:db8::1]:port"


def split_host_port(address: str, *, empty_host: bool = False) -> tuple[str, str]:
    """(host, port text) of HOST:PORT; an unbracketed IPv6 address is refused, never split.

    Splitting `2001:db8::1` at its last colon would probe host `2001:db8:` on port 1.
    """
    if address.startswith("["):
        host, sep, port = address[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            raise ValueError(f"must be [addr]:port ({IPV6_HINT})")
        port = port[1:]
        sep = ":" if port else ""
    else:
        host, sep, port = address.rpartition(":")
        if ":" in host:
            raise ValueError(f"an unbracketed IPv6 address is ambiguous; {IPV6_HINT}")
    if not sep or (not host and not empty_host):
        raise ValueError(f"must be host:port ({IPV6_HINT})")
    return host, port


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_SHOWN = "the value is not shown: it looks like a secret, not a name"


def _looks_secret(text: str) -> bool:
    """A DSN/URL with credentials, a PEM block, a JWT, or a token-like run of random characters."""
    if "-----BEGIN" in text or text.startswith("eyJ"):
        return True
    if "://" in text and "@" in text.partition("://")[2].partition("/")[0]:
        return True
    for word in re.split(r"[/\\.\s]", text):
        if len(word) < 16:
            continue
        classes = sum(any(f(c) for c in word) for f in (str.islower, str.isupper, str.isdigit))
        counts = {c: word.count(c) for c in set(word)}
        entropy = -sum(n / len(word) * math.log2(n / len(word)) for n in counts.values())
        # Env names and file names are words in one case; API keys mix all three classes.
        if (
            classes == 3
            or entropy >= 4.2
            or (classes == 2 and word.isalnum() and len(word) >= 20 and entropy >= 3.0)
        ):
            return True
    return False


def _check_env_name(value: str) -> str:
    if _looks_secret(value):
        raise ValueError(f"must name an environment variable; {_NOT_SHOWN}")
    if not _ENV_NAME.fullmatch(value):
        raise ValueError("must be an environment variable name (letters, digits and _)")
    return value


def _check_file_name(value: Any) -> Any:
    if isinstance(value, str) and _looks_secret(value):
        raise ValueError(f"must be a file path; {_NOT_SHOWN}")
    return value


# Where a secret's *name* belongs: a secret pasted there instead would be echoed by every
# "not set" or "cannot read" message, so such values are refused without quoting them.
EnvName = Annotated[str, AfterValidator(_check_env_name)]
FileName = Annotated[Path, BeforeValidator(_check_file_name)]


class SecretSource(Model):
    """A secret read from an environment variable or a file, never written inline."""

    env: EnvName | None = None
    file: FileName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env or file")
        return self

    def resolve(self, base_dir: Path | None = None) -> SecretStr:
        """Read the secret now. Raises ValueError with a message that never contains it.

        A relative file is read from `base_dir`, the config file's directory.
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return _collected(SecretStr(value))
        assert self.file is not None
        path = self.file if base_dir is None else base_dir / self.file
        try:
            return _collected(SecretStr(path.read_text().rstrip("\n")))
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"cannot read secret file {path}: {why}") from None


class SettingError(ValueError):
    """A config error found while preparing settings; `field` is the key path below the probe."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Scrubber:
    """Removes a target's secret values, and their common encodings, from text it sends out.

    Whatever a target sends back (a redirect Location, a reason phrase, a body snippet, a server
    error) may echo a credential it received; every output surface (debug lines, /probe, the
    status page, logs) shows probe text only after passing it through the target's scrubber.
    Kinds register derived values (an Authorization header, a DSN's password) with
    `register_secret`; `SecretSource.resolve` registers what it reads.
    """

    __slots__ = ("_pattern",)

    # Shorter values would match ordinary text ("on", "1") and blank out the debug output.
    MIN_LENGTH = 4

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants: set[str] = set()
        for secret in secrets:
            for form in _encodings(secret):
                if len(form) >= self.MIN_LENGTH:
                    variants.add(form)
        # Longest first, so a secret that contains another is replaced whole.
        alternatives = sorted(variants, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(v) for v in alternatives), re.IGNORECASE)
            if alternatives
            else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub("***", text)


NO_SECRETS = Scrubber()


def _encodings(secret: str) -> Iterator[str]:
    """The forms a reflected secret commonly takes: as is, percent-encoded, base64."""
    yield secret
    yield quote(secret, safe="")
    yield quote_plus(secret, safe="")
    yield quote(secret)
    raw = secret.encode()
    for b64 in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = b64.decode()
        yield text
        yield text.rstrip("=")


class _SecretSet:
    """The secrets a target's prepare step resolved: a digest for reloads, a scrubber for output."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._values: list[str] = []

    def add(self, secret: str) -> None:
        self._hash.update(secret.encode() + b"\0")
        self._values.append(secret)

    def digest(self) -> str:
        return self._hash.hexdigest() if self._values else ""

    def scrubber(self) -> Scrubber:
        # One shared empty scrubber: most targets send no secret, and fleets have thousands.
        return Scrubber(self._values) if self._values else NO_SECRETS


_COLLECTOR: contextvars.ContextVar[_SecretSet | None] = contextvars.ContextVar(
    "secret_collector", default=None
)


def register_secret(value: str) -> None:
    """Add a value derived from a secret (a header, a DSN password) to the target being prepared.

    Each kind that sends secrets registers what it sends, so the shared scrubber removes it from
    everything the target reflects. Outside a config load (no collector) this does nothing.
    """
    collector = _COLLECTOR.get()
    if collector is not None and value:
        collector.add(value)


def _collected(secret: SecretStr) -> SecretStr:
    register_secret(secret.get_secret_value())
    return secret


@contextlib.contextmanager
def collect_secrets() -> Iterator[_SecretSet]:
    """Digest every secret resolved inside the block (so a reload can see a rotated secret)."""
    collector = _SecretSet()
    token = _COLLECTOR.set(collector)
    try:
        yield collector
    finally:
        _COLLECTOR.reset(token)
