"""``make image``: build the Dockerfile for real without a Docker engine, then run it.

1. **Tools.** buildah (vfs storage, chroot isolation: no daemon, no overlay mounts, no
   user namespaces needed) and debootstrap, from Debian's packages when missing.
2. **Base.** A Debian bookworm root file system with python3 and its venv module, made
   with debootstrap (the distribution's own default mirror) and imported as
   ``localhost/tmc-bridge-base:bookworm``, passed to the Dockerfile as ``PYTHON_IMAGE``
   (the usual ``python:3.11-slim-bookworm`` comes from a container registry this machine
   does not reach). The root file system and the image are cached under ``.cache/image``.
3. **Build.** ``buildah bud`` of the Dockerfile, once with ``WITH_ROCKETMQ=true`` (the
   default image) and, with ``--kafka-only``, once more without librocketmq.
4. **Checks of the built image**: runs as uid 10001, no pip or setuptools in the runtime
   venv, ``--version`` answers, and without a mounted config it refuses to start with a
   clear message (exit 2).
5. **Run.** The image's bridge (``buildah run``, sharing the host's network) against the
   simulator and a local Kafka, with the demo config mounted read-only at
   ``/etc/tmc-bridge``; every message must arrive once, in order per key, and be confirmed.

The last line: ``image: tag=... size_mb=... build_s=... sent=... confirmed=... delivered=...
duplicates=... order_violations=... lost=...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bridge import __version__
from bridge.config import load
from devtools import harness
from devtools.demo import CONFIGS, kafka_target, topics_of

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "image"
BASE = "localhost/tmc-bridge-base:bookworm"
STORAGE = ("--storage-driver", "vfs")


def say(text: str) -> None:
    print(f"image: {text}", flush=True)


def buildah(*args: str, capture: bool = False, check: bool = True) -> str:
    done = subprocess.run(
        ["buildah", *STORAGE, *args],
        check=check,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return done.stdout.strip() if capture else ""


def ensure_tools() -> None:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"image: {', '.join(missing)} missing; install them (Debian: apt-get)")
    say(f"installing {' '.join(missing)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def ensure_base() -> None:
    if buildah("images", "-q", BASE, capture=True, check=False):
        return
    rootfs = CACHE / "rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        say("debootstrap: a Debian bookworm base with python3 (about 2 minutes, cached)")
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for cached in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cached).glob("*"):
                if item.is_file():
                    item.unlink()
    say(f"importing the base as {BASE}")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        archive = Path(tmp) / "base.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        container = buildah("from", "scratch", capture=True)
        try:
            buildah("add", container, str(archive), "/")
            path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            buildah("config", "--env", path, container)
            buildah("commit", "--quiet", container, BASE)
        finally:
            buildah("rm", container, check=False)


def host_trust() -> list[str]:
    """Build-time only: when this machine trusts an extra CA for its downloads (a TLS
    proxy; pip is pointed at the bundle with PIP_CERT or SSL_CERT_FILE), the build's RUN
    steps see the same bundle and pip uses it. Nothing of it goes into the image."""
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if not bundle or not Path(bundle).is_file():
        return []
    inside = "/etc/ssl/certs/ca-certificates.crt"
    return ["--volume", f"{bundle}:{inside}:ro", "--build-arg", f"PIP_CERT={inside}"]


def build(tag: str, *, with_rocketmq: bool) -> float:
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        check=False,
        cwd=ROOT,
        text=True,
        capture_output=True,
    ).stdout.strip()
    say(f"building {tag} (WITH_ROCKETMQ={str(with_rocketmq).lower()})")
    started = time.monotonic()
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--quiet",
        *host_trust(),
        "--build-arg",
        f"PYTHON_IMAGE={BASE}",
        "--build-arg",
        f"WITH_ROCKETMQ={str(with_rocketmq).lower()}",
        "--build-arg",
        f"VERSION={__version__}",
        "--build-arg",
        f"REVISION={revision or 'unknown'}",
        "--tag",
        tag,
        str(ROOT),
    )
    took = time.monotonic() - started
    # A rebuild leaves the previous image of the tag dangling: vfs keeps whole copies.
    buildah("rmi", "--prune", check=False)
    return took


def size_mb(tag: str) -> float:
    listed = buildah("images", "--format", "{{.Name}}:{{.Tag}} {{.Size}}", capture=True)
    for line in listed.splitlines():
        name, _, text = line.partition(" ")
        if name == tag:
            number, unit = text.split()[0], text.split()[-1].upper()
            scale = {"KB": 1e-3, "MB": 1.0, "GB": 1e3}.get(unit, 1.0)
            return float(number) * scale
    return 0.0


def run_in(container: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env_args = [f"--env={k}={v}" for k, v in (env or {}).items()]
    return subprocess.Popen(
        ["buildah", *STORAGE, "run", "--isolation", "chroot", *env_args, container, "--", *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def check_runtime(tag: str) -> None:
    container = buildah("from", "--quiet", tag, capture=True)
    try:
        checks = {
            "uid 10001": (["id", "-u"], "10001"),
            "no pip": (
                [
                    "python3",
                    "-c",
                    "import importlib.util as u; print(u.find_spec('pip') is None "
                    "and u.find_spec('setuptools') is None)",
                ],
                "True",
            ),
            "version": (["tmc-bridge", "--version"], f"tmc-bridge {__version__}"),
        }
        for what, (args, want) in checks.items():
            out, _ = run_in(container, *args).communicate(timeout=120)
            if out.strip().splitlines()[-1:] != [want]:
                raise SystemExit(f"image: {what}: expected {want!r}, got {out.strip()!r}")
        proc = run_in(container, "tmc-bridge", "run", "--config", "/etc/tmc-bridge/bridge.yaml")
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 2 or "cannot read config" not in out:
            raise SystemExit(f"image: started without a config ({proc.returncode}): {out!r}")
        say(f"{tag}: uid 10001, no pip/setuptools, refuses to start without a config: ok")
    finally:
        buildah("rm", container, check=False)


def run_through(tag: str, messages: int, workdir: Path) -> harness.Verdict:
    """The image's bridge against the simulator and a local Kafka."""
    config = ROOT / CONFIGS["kafka"]
    env = {"TMC_APP_SECRET": harness.DEMO_SECRET}
    topics = topics_of(load(config, env=env))
    mounted = workdir / "etc"
    mounted.mkdir(parents=True)
    shutil.copy(config, mounted / "bridge.yaml")
    mounted.chmod(0o755)
    (mounted / "bridge.yaml").chmod(0o644)
    with kafka_target(workdir, topics) as (broker_env, read):
        sim_port = harness.free_port()
        sim = harness.start_simulator(workdir, port=sim_port, messages=messages)
        http_port = harness.free_port()
        container = buildah(
            "from", "--quiet", "--volume", f"{mounted}:/etc/tmc-bridge:ro", tag, capture=True
        )
        bridge_env = {
            "TMC_URL": f"ws://127.0.0.1:{sim_port}/",
            "TMC_APP_KEY": harness.DEMO_APP_KEY,
            "TMC_APP_SECRET": harness.DEMO_SECRET,
            "HOSTNAME": "image-0",
            "TMC_BRIDGE_HTTP_PORT": str(http_port),
            **broker_env,
        }
        proc = run_in(
            container,
            "tmc-bridge",
            "run",
            "--config",
            "/etc/tmc-bridge/bridge.yaml",
            env=bridge_env,
        )
        try:
            say(f"running {tag}: simulator on :{sim_port} with {messages} messages, Kafka")
            started = time.monotonic()
            stats = harness.wait_confirmed(sim_port, messages, timeout_s=300)
            say(f"{stats['confirmed']} confirmed in {time.monotonic() - started:.1f} s")
            ledger = harness.sim_get(sim_port, "ledger")
            stats = harness.sim_get(sim_port, "stats")
        finally:
            # buildah run passes SIGTERM on to the bridge, which drains and exits.
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            (workdir / "bridge.log").write_text(out)
            buildah("rm", container, check=False)
            sim.stop()
        arrived = read(messages)
    return harness.verify(ledger, arrived, int(stats["confirmed"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.image",
        description="Build the image with buildah and run it against the simulator and Kafka.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages through the image")
    parser.add_argument(
        "--kafka-only", action="store_true", help="also build the variant without librocketmq"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".work" / "image")
    args = parser.parse_args(argv)
    ensure_tools()
    ensure_base()
    tag = f"localhost/tmc-bridge:{__version__}"
    build_s = build(tag, with_rocketmq=True)
    check_runtime(tag)
    say(f"{tag}: {size_mb(tag):.0f} MB, built in {build_s:.0f} s")
    if args.kafka_only:
        slim = f"{tag}-kafka"
        slim_s = build(slim, with_rocketmq=False)
        check_runtime(slim)
        say(f"{slim}: {size_mb(slim):.0f} MB, built in {slim_s:.0f} s")
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    verdict = run_through(tag, args.messages, args.workdir)
    for problem in verdict.problems[:10]:
        say(f"problem: {problem}")
    print(
        f"image: tag={tag} size_mb={size_mb(tag):.0f} build_s={build_s:.0f} "
        f"sent={verdict.sent} confirmed={verdict.confirmed} delivered={verdict.delivered} "
        f"duplicates={verdict.duplicates} order_violations={verdict.order_violations} "
        f"lost={verdict.lost}",
        flush=True,
    )
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
