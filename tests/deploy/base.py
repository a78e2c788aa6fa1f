"""Local Debian base images: no container registry is reachable.

`debootstrap` makes a minimal Debian bookworm (plus packages) from the Debian mirror apt already
uses: python3 and its venv module for deploy/Dockerfile, gcc for the build stage of
deploy/examples/ and plain minbase (debian:12-slim's stand-in) for its slim runtime. Each rootfs
tarball is cached under CACHE keyed by the recipe, and imported into Podman's store under a tag
with the same key, so later runs reuse either. A first run takes about two minutes per base
(the download and unpacking of ~100 packages).
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


def recipe_key(packages: tuple[str, ...] = PACKAGES) -> str:
    recipe = f"{RECIPE_VERSION} {SUITE} minbase {','.join(packages)}"
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


def _debootstrap(tarball: Path, packages: tuple[str, ...]) -> None:
    need("debootstrap")
    if os.geteuid() != 0:
        missing("root for debootstrap (the local Debian base images)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "rootfs"
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                *([f"--include={','.join(packages)}"] if packages else []),
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
    return debian_image("python-base", PACKAGES, "/usr/bin/python3")


def debian_image(name: str, packages: tuple[str, ...], cmd: str = "/bin/sh") -> str:
    """The tag of a local bookworm minbase + `packages` image, built (or re-imported) once."""
    need("podman")
    key = recipe_key(packages)
    ref = f"localhost/failover-test-{name}:{key}"
    exists = subprocess.run(
        ["podman", "image", "exists", ref], env=podman_env(), check=False, timeout=60
    )
    if exists.returncode == 0:
        return ref
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{name}-{key}.tar"
    with _locked(CACHE / f"{name}-{key}.lock"):
        if not tarball.exists():
            _debootstrap(tarball, packages)
        podman(
            "import",
            "--change",
            f"CMD={cmd}",
            str(tarball),
            ref,
            timeout=300,
        )
    return ref
