"""TLS client settings shared by the probe kinds, and certificate expiry extraction."""

from __future__ import annotations

import collections
import functools
import ssl
from pathlib import Path
from typing import Any

from exporter.fields import FileName, Model, SettingError


class TlsSettings(Model):
    verify: bool = True
    ca_file: FileName | None = None
    cert_file: FileName | None = None
    key_file: FileName | None = None
    server_name: str | None = None
    min_version: str | None = None


_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


# Contexts are shared by every target with the same TLS settings and files: each one holds the
# whole CA store (~0.9 MiB), and a reload would otherwise build fresh copies for every target.
_CONTEXTS: collections.OrderedDict[tuple[object, ...], ssl.SSLContext] = collections.OrderedDict()
_MAX_CONTEXTS = 256


def _file_key(path: Path | None) -> tuple[object, ...]:
    if path is None:
        return ()
    st = path.stat()  # a file replaced in place (rotation) gets a new context
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def client_context(settings: TlsSettings, base_dir: Path, prefix: str = "tls") -> ssl.SSLContext:
    """The SSL context for these settings; raise SettingError naming the bad field."""
    files = [
        base_dir / f if f is not None else None
        for f in (settings.ca_file, settings.cert_file, settings.key_file)
    ]
    try:
        key = (settings.verify, settings.min_version, *(_file_key(f) for f in files))
    except OSError:
        return _build(settings, base_dir, prefix)  # reports the unreadable file
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = _CONTEXTS[key] = _build(settings, base_dir, prefix)
        while len(_CONTEXTS) > _MAX_CONTEXTS:
            _CONTEXTS.popitem(last=False)
    else:
        _CONTEXTS.move_to_end(key)
    return ctx


def _build(settings: TlsSettings, base_dir: Path, prefix: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if settings.ca_file is not None:
        path = base_dir / settings.ca_file
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise SettingError(f"{prefix}.ca_file", f"cannot load CA file {path}: {exc}") from None
    if (settings.cert_file is None) != (settings.key_file is None):
        raise SettingError(f"{prefix}.cert_file", "cert_file and key_file go together")
    if settings.cert_file is not None and settings.key_file is not None:
        cert, key = base_dir / settings.cert_file, base_dir / settings.key_file
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise SettingError(
                f"{prefix}.cert_file", f"cannot load client certificate {cert}: {exc}"
            ) from None
    if settings.min_version is not None:
        try:
            ctx.minimum_version = _VERSIONS[settings.min_version]
        except KeyError:
            raise SettingError(
                f"{prefix}.min_version", f"must be one of {', '.join(_VERSIONS)}"
            ) from None
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@functools.lru_cache(maxsize=512)
def _not_after(der: bytes) -> float:
    # cryptography (about 8 MiB of RSS with OpenSSL bindings) is loaded by the first TLS probe,
    # not by every exporter (tests/test_lazy_imports.py).
    from cryptography import x509

    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


def peer_cert_not_after(ssl_object: Any) -> float | None:
    """notAfter of the peer's leaf certificate, also when verification is off."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return _not_after(der)
    except ValueError:
        return None
