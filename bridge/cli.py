"""``tmc-bridge`` command line: run, check-config, simulate.

Exit codes: 0 ok (``run``: stopped after a complete drain), 1 runtime failure (e.g.
``run`` stopped before its drain finished), 2 usage or
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
    source = cfg.source_kind.summary(cfg.source.selected)
    sink = cfg.sink_kind.summary(cfg.sink.selected)
    # What the adapters need installed (librocketmq for a RocketMQ side): exit 1 if not.
    cfg.source_kind.requirements()
    cfg.sink_kind.requirements()
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
        redeliver_on_disconnect=args.redeliver_on_disconnect,
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
    sim.add_argument(
        "--redeliver-on-disconnect",
        action="store_true",
        help="hand a lost connection's unconfirmed messages to another one at once "
        "(default: after --confirm-timeout-s, as TMC does)",
    )
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    sim.set_defaults(func=_cmd_simulate)

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
