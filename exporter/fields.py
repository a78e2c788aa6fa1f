"""Field types shared by the config schema and the probe settings models."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

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


class SecretSource(Model):
    """A secret read from an environment variable or a file, never written inline."""

    env: str | None = None
    file: Path | None = None

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


class _SecretDigest:
    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._used = False

    def add(self, secret: SecretStr) -> None:
        self._hash.update(secret.get_secret_value().encode() + b"\0")
        self._used = True

    def digest(self) -> str:
        return self._hash.hexdigest() if self._used else ""


_COLLECTOR: contextvars.ContextVar[_SecretDigest | None] = contextvars.ContextVar(
    "secret_collector", default=None
)


def _collected(secret: SecretStr) -> SecretStr:
    collector = _COLLECTOR.get()
    if collector is not None:
        collector.add(secret)
    return secret


@contextlib.contextmanager
def collect_secrets() -> Iterator[_SecretDigest]:
    """Digest every secret resolved inside the block (so a reload can see a rotated secret)."""
    collector = _SecretDigest()
    token = _COLLECTOR.set(collector)
    try:
        yield collector
    finally:
        _COLLECTOR.reset(token)
