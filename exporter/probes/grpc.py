"""gRPC probe: the standard grpc.health.v1.Health/Check over grpc.aio, plaintext or TLS.

grpcio is imported inside `run` only: a config without grpc targets never loads it.

What the channel hides: grpc-core resolves, connects, does the TLS handshake and the HTTP/2
preface inside one state machine and reports only its state (CONNECTING -> READY). So the
`connect` phase is all of that together; TLS cannot be timed apart from TCP, and a TLS or
protocol failure is known only from the text of the UNAVAILABLE status it produces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from exporter.fields import SecretSource, SettingError
from exporter.metrics import Reason
from exporter.probes.base import ProbeContext, ProbeFailure, ProbeKind, ProbeSettings, register
from exporter.probes.tcp import split_address
from exporter.tlsconf import TlsSettings

# gRPC metadata keys: lowercase, no "grpc-" prefix (reserved), no binary "-bin" values here.
_KEY = re.compile(r"[0-9a-z_.\-]+")


class GrpcSettings(ProbeSettings):
    kind: Literal["grpc"]
    address: str
    # The health service's name for the target; "" asks for the server as a whole.
    service: str = ""
    tls: bool = False
    tls_config: TlsSettings = TlsSettings()
    metadata: dict[str, str] = Field(default_factory=dict)
    # Metadata whose values are secrets (a token): read from env or file like http's
    # secret_headers, never logged or put in an error message.
    secret_metadata: dict[str, SecretSource] = Field(default_factory=dict)
    # Keep one channel per target across probes; the connect phase is then measured only when
    # the channel (re)connects, so the default is a new channel per probe.
    reuse_channel: bool = False

    @model_validator(mode="after")
    def _tls_config_needs_tls(self) -> GrpcSettings:
        if not self.tls and "tls_config" in self.model_fields_set:
            raise ValueError("tls_config is set but tls is false; add tls: true")
        return self

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        split_address(value)
        return value

    @field_validator("metadata", "secret_metadata")
    @classmethod
    def _check_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not _KEY.fullmatch(key) or key.startswith("grpc-") or key.endswith("-bin"):
                raise ValueError(
                    f"{key!r} is not a metadata key (lowercase letters, digits, _ . -; "
                    "not grpc-*, not *-bin)"
                )
        return value

    @model_validator(mode="after")
    def _no_key_twice(self) -> GrpcSettings:
        both = set(self.metadata) & set(self.secret_metadata)
        if both:
            raise ValueError(f"{sorted(both)[0]!r} is in both metadata and secret_metadata")
        return self


@dataclasses.dataclass(frozen=True)
class Grpc:
    target: str
    service: str
    tls: bool
    # PEM bytes read at prepare, so a missing file is a config error and not a probe failure.
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None
    server_name: str | None
    metadata: tuple[tuple[str, str], ...]
    secret_metadata: tuple[tuple[str, SecretStr], ...] = dataclasses.field(repr=False)
    reuse_channel: bool


def _read(base_dir: Path, path: Path | None, field: str) -> bytes | None:
    if path is None:
        return None
    try:
        return (base_dir / path).read_bytes()
    except OSError as exc:
        raise SettingError(field, f"cannot read {base_dir / path}: {exc.strerror}") from None


def prepare(s: GrpcSettings, base_dir: Path) -> Grpc:
    host, port = split_address(s.address)
    tc = s.tls_config
    if (tc.cert_file is None) != (tc.key_file is None):
        raise SettingError("tls_config.cert_file", "cert_file and key_file go together")
    # grpc-core has neither switch; saying so beats silently verifying (or not) anyway.
    if not tc.verify:
        raise SettingError("tls_config.verify", "the grpc probe always verifies")
    if tc.min_version is not None:
        raise SettingError("tls_config.min_version", "not supported by the grpc probe")
    secrets = []
    for key, source in s.secret_metadata.items():
        try:
            secret = source.resolve(base_dir)
        except ValueError as exc:
            raise SettingError(f"secret_metadata.{key}", str(exc)) from None
        if any(c in secret.get_secret_value() for c in "\r\n\0"):
            raise SettingError(f"secret_metadata.{key}", "must not contain CR, LF or NUL")
        secrets.append((key, secret))
    return Grpc(
        target=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        service=s.service,
        tls=s.tls,
        root_certificates=_read(base_dir, tc.ca_file, "tls_config.ca_file"),
        private_key=_read(base_dir, tc.key_file, "tls_config.key_file"),
        certificate_chain=_read(base_dir, tc.cert_file, "tls_config.cert_file"),
        server_name=tc.server_name,
        metadata=tuple(s.metadata.items()),
        secret_metadata=tuple(secrets),
        reuse_channel=s.reuse_channel,
    )


def _import_grpc() -> Any:
    # grpc-core logs handshake failures to stderr itself, outside the exporter's log; the probe
    # result already says why. GRPC_VERBOSITY set by the user wins.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc

    return grpc


def _channel(p: Grpc) -> Any:
    grpc = _import_grpc()

    # No retries and no transparent reconnect backoff beyond the probe: one attempt, measured.
    options: list[tuple[str, int | str]] = [
        ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if not p.tls:
        return grpc.aio.insecure_channel(p.target, options=options)
    if p.server_name is not None:
        options.append(("grpc.ssl_target_name_override", p.server_name))
    creds = grpc.ssl_channel_credentials(
        root_certificates=p.root_certificates,
        private_key=p.private_key,
        certificate_chain=p.certificate_chain,
    )
    return grpc.aio.secure_channel(p.target, creds, options=options)


@contextlib.asynccontextmanager
async def _owned(p: Grpc) -> AsyncIterator[Any]:
    channel = _channel(p)
    try:
        yield channel
    finally:
        # grace=None cancels whatever is in flight; a hostile server cannot hold the close.
        await channel.close(grace=None)


async def run(p: Grpc, ctx: ProbeContext) -> None:
    grpc = _import_grpc()
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ctx.log(f"grpc {'tls' if p.tls else 'plaintext'} {p.target} service {p.service!r}")
    async with contextlib.AsyncExitStack() as stack:
        if p.reuse_channel:
            channel = await ctx.resources.shared(("grpc", p), lambda: _owned(p))
        else:
            channel = await stack.enter_async_context(_owned(p))
        state = channel.get_state(try_to_connect=True)
        if state is not grpc.ChannelConnectivity.READY:
            with ctx.phase("connect"):
                # Until READY or the first failure; the scheduler's timeout bounds the wait.
                while state not in (
                    grpc.ChannelConnectivity.READY,
                    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                    grpc.ChannelConnectivity.SHUTDOWN,
                ):
                    await channel.wait_for_state_change(state)
                    state = channel.get_state()
            ctx.log(f"channel {state.name.lower()}")
        stub = health_pb2_grpc.HealthStub(channel)
        metadata = p.metadata + tuple((k, v.get_secret_value()) for k, v in p.secret_metadata)
        # The deadline goes on the wire too, so the server can give up when we do.
        deadline = max(ctx.timeout, 0.001) if ctx.timeout else None
        start = time.perf_counter()
        with ctx.phase("rpc"):
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=p.service),
                    timeout=deadline,
                    metadata=metadata or None,
                    wait_for_ready=False,
                )
            except grpc.aio.AioRpcError as exc:
                raise _failure(exc, p) from None
        ctx.log(f"rpc took {time.perf_counter() - start:.6f}s")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    ctx.log(f"status {status}")
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        reason = Reason.SERVICE_UNKNOWN if status == "SERVICE_UNKNOWN" else Reason.NOT_SERVING
        raise ProbeFailure(reason, f"health status {status}")


# grpc-core's words for a failed handshake and for a peer that does not speak HTTP/2.
_TLS_WORDS = ("ssl", "tls", "handshake", "certificate", "verification")
_PROTOCOL_WORDS = ("http1", "http/1", "preface", "frame", "hpack", "protocol", "settings")
_RESET_WORDS = ("reset", "socket closed", "connection closed", "eof", "broken pipe")


def _failure(exc: Any, p: Grpc) -> ProbeFailure:
    import grpc

    code = exc.code()
    # The server's detail text is the target's, not ours: it cannot hold our secrets unless the
    # server echoes them, so those are masked before anything is kept.
    details = str(exc.details() or "")
    for _, secret in p.secret_metadata:
        value = secret.get_secret_value()
        if value:
            details = details.replace(value, "********")
    details = details[:300]
    name = code.name if code is not None else "UNKNOWN"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ProbeFailure(Reason.TIMEOUT, f"deadline exceeded: {details}")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return ProbeFailure(Reason.UNIMPLEMENTED, f"no health service: {details}")
    if code is grpc.StatusCode.NOT_FOUND:
        # Health/Check answers NOT_FOUND for a service it does not know.
        return ProbeFailure(Reason.SERVICE_UNKNOWN, f"unknown service {p.service!r}: {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ProbeFailure(Reason.AUTH, f"{name}: {details}")
    if code is grpc.StatusCode.UNAVAILABLE:
        text = details.lower()
        if any(w in text for w in _TLS_WORDS):
            return ProbeFailure(Reason.TLS, f"TLS handshake failed: {details}")
        if "refused" in text or "unreachable" in text or "resolve" in text:
            return ProbeFailure(Reason.CONNECT, f"cannot connect: {details}")
        if any(w in text for w in _PROTOCOL_WORDS):
            return ProbeFailure(Reason.PROTOCOL, f"not a gRPC server: {details}")
        if any(w in text for w in _RESET_WORDS):
            return ProbeFailure(Reason.RESET, f"connection lost: {details}")
        return ProbeFailure(Reason.CONNECT, f"unavailable: {details}")
    return ProbeFailure(Reason.PROTOCOL, f"{name}: {details}")


def describe(s: GrpcSettings) -> str:
    service = f" {s.service}" if s.service else ""
    return f"grpc{'+tls' if s.tls else ''} {s.address}{service}"


KIND = register(
    ProbeKind(
        name="grpc",
        settings=GrpcSettings,
        prepare=prepare,
        run=run,
        reasons=(
            Reason.CONNECT,
            Reason.TLS,
            Reason.RESET,
            Reason.PROTOCOL,
            Reason.AUTH,
            Reason.NOT_SERVING,
            Reason.SERVICE_UNKNOWN,
            Reason.UNIMPLEMENTED,
        ),
        phases=("connect", "rpc"),
        describe=describe,
        # A health check of the service itself: counts for the region and ranks images like http.
        votes_in_quorum=True,
        ranks_images=True,
    )
)
