"""Provision ``librocketmq.so`` for rocketmq-client-python, reproducibly.

rocketmq-client-python 2.0.0 (on PyPI, pure Python) is a ctypes wrapper around the C API of
rocketmq-client-cpp and loads ``librocketmq.so`` from its own package folder, or from the
system library path. Upstream ships that library only as GitHub release packages, which
are not reachable from every build machine; the ``rocketmq-client-python==0.5.0rc2``
manylinux wheel on PyPI bundles a librocketmq with the same C API (plus the zlib it links
against, in ``.libs/``). This tool fetches that wheel through pip (so the configured index
and proxy apply), checks its pinned SHA-256, and copies the library files next to the
installed 2.0.0 package. It is idempotent: an already provisioned library is left alone.

    python -m bridge.rocketmq.provision            # install next to the rocketmq package
    python -m bridge.rocketmq.provision --check    # exit 1 with a message if missing

The wheel is kept in a cache folder (``--cache``, default :func:`default_cache`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "rocketmq-client-python==0.5.0rc2"
WHEEL_NAME = "rocketmq_client_python-0.5.0rc2-py2.py3-none-manylinux1_x86_64.whl"
WHEEL_SHA256 = "5d71a88ea023f06a6dc3ffd35d88270b8d8aa553f2075e258fc67d4d3e9ba5b9"
#: Members of the wheel that make up the native library (the rpath is $ORIGIN/.libs).
_MEMBERS = ("rocketmq/librocketmq.so", "rocketmq/.libs/libz-a147dcb0.so.1.2.3")


class ProvisionError(RuntimeError):
    """The library could not be provisioned; the message says what to do."""


def package_dir() -> Path:
    """The folder of the installed ``rocketmq`` package, found without importing it
    (importing fails exactly when the library is missing)."""
    spec = importlib.util.find_spec("rocketmq")
    if spec is None or spec.origin is None:
        raise ProvisionError(
            "the Python package rocketmq-client-python is not installed "
            "(pip install rocketmq-client-python==2.0.0, a dependency of tmc-bridge)"
        )
    return Path(spec.origin).parent


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache() -> Path:
    """Where the wheel is kept when no ``--cache`` is given: ``$TMC_BRIDGE_CACHE/librocketmq``
    when that is set; in a source checkout ``<repo>/.cache/librocketmq`` (git-ignored);
    else ``$XDG_CACHE_HOME/tmc-bridge/librocketmq`` (``~/.cache`` by default). The image
    build passes ``--cache``."""
    shared = os.environ.get("TMC_BRIDGE_CACHE")
    if shared:
        return Path(shared) / "librocketmq"
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "bridge").is_dir():
        return repo / ".cache" / "librocketmq"
    user = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(user) / "tmc-bridge" / "librocketmq"


def fetch_wheel(cache: Path) -> Path:
    """Download the wheel into ``cache`` once; verify the pinned digest every time."""
    wheel = cache / WHEEL_NAME
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "manylinux1_x86_64",
                "--dest",
                tmp,
                WHEEL_REQUIREMENT,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            got = Path(tmp) / WHEEL_NAME
            if done.returncode != 0 or not got.is_file():
                raise ProvisionError(
                    f"pip could not download {WHEEL_REQUIREMENT}: "
                    f"{(done.stderr or done.stdout).strip()[-800:]}"
                )
            os.replace(got, wheel)
    actual = _sha256(wheel)
    if actual != WHEEL_SHA256:
        wheel.unlink()
        raise ProvisionError(
            f"{WHEEL_NAME} has SHA-256 {actual}, expected {WHEEL_SHA256}; refusing to use it"
        )
    return wheel


def installed(target: Path) -> bool:
    return all((target / member.removeprefix("rocketmq/")).is_file() for member in _MEMBERS)


def install(target: Path | None = None, cache: Path | None = None) -> Path:
    """Put librocketmq.so (and its zlib) into the rocketmq package folder."""
    target = target or package_dir()
    if installed(target):
        return target / "librocketmq.so"
    wheel = fetch_wheel(cache or default_cache())
    with zipfile.ZipFile(wheel) as zf:
        for member in _MEMBERS:
            dest = target / member.removeprefix("rocketmq/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.name + ".partial")
            with zf.open(member) as src, partial.open("wb") as out:
                shutil.copyfileobj(src, out)
            partial.chmod(0o755)
            os.replace(partial, dest)
    return target / "librocketmq.so"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that it loads")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"where the wheel is kept (default {default_cache()})",
    )
    args = parser.parse_args(argv)
    from bridge.rocketmq import client

    try:
        if not args.check:
            path = install(cache=args.cache)
            print(f"librocketmq: {path}")
        client.ensure_library()
    except (ProvisionError, client.NativeLibraryMissing) as exc:
        print(f"librocketmq: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
