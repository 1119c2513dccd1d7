"""``tmc-bridge`` command line: run, check-config, simulate, demo.

Exit codes: 0 ok (``run``: stopped after a complete drain), 1 runtime failure (e.g.
the demo found a loss, or ``run`` stopped before its drain finished), 2 usage or
configuration error. Errors are one readable line (or one per bad key), never a
traceback and never a secret.

``run`` makes every check ``check-config`` makes (:func:`_load_checked`) before it
starts anything, so a config that ``check-config`` refuses never half-starts a bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import structlog

from bridge import __version__
from bridge.errors import BridgeError, ConfigError

if TYPE_CHECKING:
    from bridge.config import BridgeConfig


def _load_checked(path: str) -> BridgeConfig:
    """Load the config and check all of it: the file, the log variables, secret files
    and (Kafka) the librdkafka configuration. Raises ConfigError; touches no network."""
    from bridge import config as config_mod
    from bridge.observability import logging as obs_logging

    cfg = config_mod.load(Path(path))
    obs_logging.settings(cfg.log.level, cfg.log.format)
    config_mod.check_runtime(cfg)
    return cfg


def _without_userinfo(url: str) -> str:
    """The URL for printing: a ``user:password@`` part is replaced by ``***@``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import Bridge
    from bridge.observability import logging as obs_logging

    cfg = _load_checked(args.config)
    obs_logging.configure(cfg.log.level, cfg.log.format)

    async def main() -> bool:
        # A ConfigError raised while building (a secret file gone since the check)
        # leaves asyncio.run like any other and main() reports it: exit 2, no traceback.
        bridge = Bridge(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, bridge.request_stop)
        return await bridge.run()

    # 0: drained (everything committed was confirmed); 1: stopped without finishing the
    # drain (second signal or drain_timeout_s): the source redelivers what was left.
    return 0 if asyncio.run(main()) else 1


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_checked(args.config)
    # A RocketMQ side also needs its native library (exit 1 when it is missing).
    if cfg.source.tmc is not None:
        tmc = cfg.source.tmc
        source = f"tmc {_without_userinfo(tmc.url)} app_key={tmc.app_key} group={tmc.group}"
    else:
        ons = cfg.source.ons_config
        address = ons.name_server or _without_userinfo(ons.name_server_domain or "")
        source = f"ons {address} group={ons.group_id}"
    if cfg.sink.kafka is not None:
        kafka = cfg.sink.kafka
        sink = f"kafka {kafka.bootstrap_servers} transactional_id={kafka.transactional_id}"
    else:
        rmq = cfg.sink.rocketmq_config
        address = rmq.name_server or _without_userinfo(rmq.name_server_domain or "")
        sink = f"rocketmq {address} mode={rmq.mode}"
    if cfg.sink.type == "rocketmq" or cfg.source.type == "ons":
        from bridge import rocketmq_sdk

        rocketmq_sdk.ensure_library()
    print(f"config ok: {source} -> {sink} routes={len(cfg.routing.topics)}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from bridge.observability import logging as obs_logging
    from bridge.sources.tmc.simulator import Simulator, SimulatorConfig

    obs_logging.configure(args.log_level, "auto")
    secret = os.environ.get(args.app_secret_env)
    if not secret:
        raise ConfigError(f"simulate: environment variable {args.app_secret_env} is not set")
    cfg = SimulatorConfig(
        host=args.host,
        port=args.port,
        apps={args.app_key: secret},
        confirm_timeout_s=args.confirm_timeout_s,
        failed_delay_s=args.failed_delay_s,
        window=args.window,
        distribution=args.distribution,
        seed=args.seed,
    )

    async def main() -> None:
        sim = Simulator(cfg)
        await sim.start()
        if args.messages:
            sim.publish(args.messages)
        print(
            f"tmc simulator ready at {sim.url} (stats: http://{args.host}:{sim.port}/_sim/stats)",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.stop()

    asyncio.run(main())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bridge.tools import demo

    return demo.main(messages=args.messages, workdir=Path(args.workdir), sink=args.sink)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmc-bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tmc-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the bridge")
    run.add_argument("--config", default="bridge.yaml", help="YAML config (default bridge.yaml)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", default="bridge.yaml")
    check.set_defaults(func=_cmd_check_config)

    sim = sub.add_parser("simulate", help="run a TMC server simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--app-key", default="12345678")
    sim.add_argument(
        "--app-secret-env",
        default="TMC_APP_SECRET",
        help="environment variable holding the accepted app secret",
    )
    sim.add_argument("--messages", type=int, default=0, help="generate this many at start")
    sim.add_argument("--confirm-timeout-s", type=float, default=60.0)
    sim.add_argument("--failed-delay-s", type=float, default=360.0)
    sim.add_argument("--window", type=int, default=1000)
    sim.add_argument("--distribution", choices=["round_robin", "random"], default="round_robin")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    sim.set_defaults(func=_cmd_simulate)

    demo = sub.add_parser("demo", help="local broker + simulator + bridge, then a summary")
    demo.add_argument("--messages", type=int, default=10_000)
    demo.add_argument("--sink", choices=["kafka", "rocketmq"], default="kafka")
    demo.add_argument("--workdir", default=".work/demo")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"tmc-bridge: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        structlog.get_logger("bridge").error("fatal", error=str(exc))
        print(f"tmc-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
