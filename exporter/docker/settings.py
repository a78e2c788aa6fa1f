"""Docker settings as the config file spells them: a region's endpoint and an image's `run:`.

Pure pydantic models with no Docker SDK import, so the config schema (and `check-config`) can
validate them without loading `docker` and `requests`; the client lives in client.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from yarl import URL

from exporter.fields import Duration, FileName, Model, split_host_port


class DockerTls(Model):
    ca_file: FileName | None = None
    cert_file: FileName | None = None
    key_file: FileName | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _pair(self) -> DockerTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        return self


class DockerSettings(Model):
    """A region's Docker Engine endpoint (`docker:` under a region)."""

    host: str
    tls: DockerTls | None = None
    # Pinned so that creating a client never makes a blocking version request.
    api_version: str = "1.41"
    # Bound on every SDK call; a hung daemon costs one thread for this long, not forever.
    call_timeout: Duration = 10.0
    image_refresh_interval: Duration = 60.0
    max_concurrent_cold_starts: int = Field(1, ge=1, le=64)
    # Where cold-start containers publish their port on the Docker host, and where the
    # readiness check connects (default: 127.0.0.1 for unix://, the daemon's host for tcp://).
    publish_address: str = "127.0.0.1"
    ready_host: str | None = None

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if value.startswith("tcp://"):
            split_host_port(value[6:].partition("/")[0].rpartition("@")[2])
        url = URL(value)
        if url.scheme == "unix":
            if not url.path or url.path == "/":
                raise ValueError("unix:// needs a socket path, e.g. unix:///var/run/docker.sock")
        elif url.scheme == "tcp":
            if not url.host or url.port is None:
                raise ValueError("tcp:// needs host and port, e.g. tcp://10.0.0.5:2376")
            if url.user or url.password:
                raise ValueError("must not contain credentials; use tls client certificates")
        else:
            raise ValueError("must start with unix:// or tcp://")
        return value

    def resolve(self, base_dir: Path) -> DockerSettings:
        """Make TLS file paths absolute (relative to the config file) and check they exist."""
        if self.tls is None:
            return self
        files: dict[str, Path | None] = {}
        for key in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self.tls, key)
            if path is not None:
                path = path if path.is_absolute() else base_dir / path
                if not path.is_file():
                    raise ValueError(f"tls.{key}: cannot read {path}")
            files[key] = path
        return self.model_copy(update={"tls": self.tls.model_copy(update=files)})

    @property
    def reach_host(self) -> str:
        if self.ready_host:
            return self.ready_host
        url = URL(self.host)
        return url.host if url.scheme == "tcp" and url.host else "127.0.0.1"


class Readiness(Model):
    """When a cold-started container counts as ready."""

    kind: Literal["http", "tcp"] = "http"
    path: str = "/"
    # Empty: any status below 400 (a running server that redirects is up).
    status: list[int] = Field(default_factory=list)
    poll_interval: Duration = 0.05

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value


class RunSettings(Model):
    """How to run an image for a cold start or a bench (`run:` under an image)."""

    port: int = Field(ge=1, le=65535)
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    readiness: Readiness = Readiness()
