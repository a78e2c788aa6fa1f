"""A local Python base image for building deploy/Dockerfile: no container registry is reachable.

`debootstrap` makes a minimal Debian bookworm with python3 and its venv module from the Debian
mirror apt already uses; the rootfs tarball is cached under CACHE keyed by the recipe, and
imported into Podman's store under a tag with the same key, so later runs reuse either.
A first run takes about two minutes (the download and unpacking of ~100 packages).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.docker import podman, podman_env
from tests.tools import missing, need

CACHE = Path(os.environ.get("FAILOVER_TEST_CACHE", "/var/cache/failover-exporter-test"))
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv")
# Bump when the recipe changes in a way the fields above do not show.
RECIPE_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def recipe_key() -> str:
    recipe = f"{RECIPE_VERSION} {SUITE} minbase {','.join(PACKAGES)}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def apt_mirror() -> str:
    """The Debian mirror of apt's own sources (deb822 or one-line), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d")
    files = [*sorted(sources.glob("*.sources")), *sorted(sources.glob("*.list"))]
    files.append(Path("/etc/apt/sources.list"))
    for path in files:
        with contextlib.suppress(OSError):
            text = path.read_text()
            for uri in re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE):
                if not uri.rstrip("/").endswith("-security"):
                    return uri
            for uri in re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s", text, re.MULTILINE):
                if not uri.rstrip("/").endswith("-security"):
                    return uri
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # pytest-xdist workers (and concurrent runs) must not debootstrap into the same cache.
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _debootstrap(tarball: Path) -> None:
    need("debootstrap")
    if os.geteuid() != 0:
        missing("root for debootstrap (the Python base image for deploy/Dockerfile)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "rootfs"
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                apt_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            detail = log.read_text()[-2000:] if log.exists() else proc.stderr[-2000:]
            raise RuntimeError(f"debootstrap failed: {detail}")
        # Package caches and lists are no part of a base image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
            check=True,
            timeout=300,
        )
        partial.rename(tarball)


def python_base_image() -> str:
    """The tag of the local bookworm+python3 image, built (or re-imported) on first use."""
    need("podman")
    key = recipe_key()
    ref = f"localhost/failover-test-python-base:{key}"
    exists = subprocess.run(
        ["podman", "image", "exists", ref], env=podman_env(), check=False, timeout=60
    )
    if exists.returncode == 0:
        return ref
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"python-base-{key}.tar"
    with _locked(CACHE / f"python-base-{key}.lock"):
        if not tarball.exists():
            _debootstrap(tarball)
        podman(
            "import",
            "--change",
            "CMD=/usr/bin/python3",
            str(tarball),
            ref,
            timeout=300,
        )
    return ref
