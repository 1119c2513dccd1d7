"""``tmc-bridge`` command line: run, check-config, dead-letters replay, simulate.

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
    extras = ""
    if cfg.routing.groups:
        extras += f" group_routes={','.join(cfg.routing.groups)}"
    if cfg.filters:
        extras += f" filters={','.join(rule.name for rule in cfg.filters)}"
    print(f"config ok: {source} -> {sink} routes={len(cfg.routing.topics)}{extras}")
    if not args.connect:
        return 0
    # Log in to the source and reach the broker, one line each; nothing is consumed or
    # written (each adapter's own check: its kind's connect_check).
    from bridge.ops.connect_check import reach, render

    lines = reach(cfg, args.timeout_s)
    for line in lines:
        print(render(line), flush=True)
    return 0 if all(line.ok for line in lines) else 1


def _cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    from bridge.observability import logging as obs_logging
    from bridge.ops import replay

    cfg = _load_checked(args.config)
    # The report is the output: the producer's own info lines would only clutter it.
    level = cfg.log.level if cfg.log.level in ("warning", "error") else "warning"
    obs_logging.configure(level, cfg.log.format)
    selection = replay.Selection(
        since_ms=None if args.since is None else replay.parse_time(args.since),
        until_ms=None if args.until is None else replay.parse_time(args.until),
        reason=args.reason,
        limit=args.limit,
    )

    def progress(text: str) -> None:
        print(f"... {text}", file=sys.stderr, flush=True)

    report = replay.read(cfg, selection, timeout_s=args.timeout_s, progress=progress)
    if args.apply:
        replay.write(cfg, report, progress=progress)
    for line in replay.summary(report, applied=args.apply, listing=args.list):
        print(line)
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from bridge.observability import logging as obs_logging
    from bridge.sources.tmc.simulator import FaultSchedule, Simulator, SimulatorConfig

    obs_logging.configure(args.log_level, "auto")
    secret = os.environ.get(args.app_secret_env)
    if not secret:
        raise ConfigError(f"simulate: environment variable {args.app_secret_env} is not set")
    try:
        faults = [FaultSchedule.parse(text) for text in args.fault]
    except ValueError as exc:
        raise ConfigError(f"simulate: --fault: {exc}") from None
    cfg = SimulatorConfig(
        host=args.host,
        port=args.port,
        apps={args.app_key: secret},
        confirm_timeout_s=args.confirm_timeout_s,
        failed_delay_s=args.failed_delay_s,
        ttl_s=args.ttl_s,
        window=args.window,
        distribution=args.distribution,
        redeliver_on_disconnect=args.redeliver_on_disconnect,
        login_error_code=args.login_error_code,
        login_error_phrase=args.login_error_phrase,
        close_on_login_error=args.close_on_login_error,
        strict=args.strict,
        seed=args.seed,
        answer_pings=args.answer_pings,
        ping_interval_s=args.ping_interval_s or None,
        idle_close_s=args.idle_close_s or None,
        min_reconnect_interval_s=args.min_reconnect_interval_s,
        max_connections=args.max_connections,
        pacing=args.pacing,
        push_batch=args.push_batch,
        push_round_max=args.push_round_max,
        push_round_interval_s=args.push_round_interval_s,
        faults=faults,
        require_auth_token=args.require_auth_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )

    async def main() -> None:
        sim = Simulator(cfg)
        await sim.start()
        if args.messages:
            sim.publish(args.messages)
        print(
            f"tmc simulator ready at {sim.url} (stats: {'https' if sim.tls else 'http'}://"
            f"{args.host}:{sim.port}/_sim/stats; TOP gateway for source.tmc_http:"
            f" {sim.gateway_url})",
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


def _simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bridge.sources.tmc.simulator import FAULTS

    faults = "; ".join(f"{name}: {what}" for name, what in FAULTS.items())
    sim = sub.add_parser(
        "simulate",
        help="run a TMC server simulator",
        description="A TMC WebSocket server for tests: the same port answers HTTP control "
        "requests (/_sim/stats, /_sim/ledger, /_sim/publish?count=N, "
        "/_sim/fault?name=NAME).",
        formatter_class=_Help,
    )
    net = sim.add_argument_group("listening and login")
    net.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    net.add_argument("--port", type=int, default=8765, help="WebSocket and HTTP control port")
    net.add_argument("--app-key", default="12345678", help="the accepted app key")
    net.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help="serve wss:// (and https:// for the gateway) with this certificate (chain)",
    )
    net.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    net.add_argument(
        "--app-secret-env",
        default="TMC_APP_SECRET",
        help="environment variable holding the accepted app secret",
    )
    proto = sim.add_argument_group("protocol")
    proto.add_argument(
        "--strict",
        action="store_true",
        help="refuse non-canonical client frames (a missing token, an id that is not "
        "Int64, ...) instead of accepting the variants real clients send",
    )
    proto.add_argument(
        "--login-error-code", type=int, default=1, help="StatusCode of a failed CONNECTACK"
    )
    proto.add_argument(
        "--login-error-phrase",
        default="invalid sign",
        help="StatusPhrase of a CONNECTACK refused for its sign",
    )
    proto.add_argument(
        "--close-on-login-error",
        action="store_true",
        help="close the socket after a failed CONNECTACK (top-link keeps it open)",
    )
    proto.add_argument(
        "--require-auth-token",
        action="store_true",
        help="refuse a CONNECT without a token from taobao.tmc.auth.get (GET /router/rest "
        "on this port) for its app key and group; each token serves one login within "
        "5 minutes",
    )
    proto.add_argument(
        "--min-reconnect-interval-s",
        type=float,
        default=0.0,
        help="refuse a login of an (app key, group) sooner than this after its "
        "previous login (0: off)",
    )
    proto.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="refuse logins beyond this many connections per group (0: no limit)",
    )
    live = sim.add_argument_group("liveness")
    live.add_argument(
        "--answer-pings",
        action="store_true",
        help="answer WebSocket pings with pongs (the real server does not, and a pong "
        "kills the official Java client)",
    )
    live.add_argument(
        "--ping-interval-s",
        type=float,
        default=0.0,
        help="send a WebSocket ping this often, no pong required (0: never)",
    )
    live.add_argument(
        "--idle-close-s",
        type=float,
        default=0.0,
        help="close with 1011 'reach max idle time' after this long without traffic (0: never)",
    )
    dlv = sim.add_argument_group("delivery")
    dlv.add_argument("--messages", type=int, default=0, help="generate this many at start")
    dlv.add_argument(
        "--confirm-timeout-s",
        type=float,
        default=60.0,
        help="redeliver a pushed message not confirmed within this time",
    )
    dlv.add_argument(
        "--failed-delay-s",
        type=float,
        default=360.0,
        help="redeliver a message this long after the client reported it Failed",
    )
    dlv.add_argument(
        "--ttl-s",
        type=float,
        default=24 * 3600.0,
        help="drop messages older than this, queued or in flight",
    )
    dlv.add_argument(
        "--window",
        type=int,
        default=1000,
        help="unconfirmed pushes per connection before the server waits",
    )
    dlv.add_argument(
        "--distribution",
        choices=["round_robin", "random"],
        default="round_robin",
        help="how a group's messages are spread over its connections",
    )
    dlv.add_argument(
        "--redeliver-on-disconnect",
        action="store_true",
        help="requeue a closed connection's unconfirmed messages at once "
        "(else after --confirm-timeout-s)",
    )
    dlv.add_argument(
        "--pacing",
        action="store_true",
        help="pace pushes per round like top-push (else the whole window at once)",
    )
    dlv.add_argument(
        "--push-batch",
        type=int,
        default=32,
        help="pacing: a round ends when less than half of this is left in the window",
    )
    dlv.add_argument(
        "--push-round-max", type=int, default=320, help="pacing: pushes per connection and round"
    )
    dlv.add_argument(
        "--push-round-interval-s",
        type=float,
        default=1.0,
        help="pacing: seconds between the starts of two rounds",
    )
    dlv.add_argument("--seed", type=int, default=1, help="seed of the generated orders")
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME:every=SECONDS[,k=v]",
        help=f"inject a fault on a schedule, repeatable (e.g. drop_connection:every=30s, "
        f"close_code:every=60s,code=4001; group=NAME picks the group, default 'default'). "
        f"Faults: {faults}",
    )
    sim.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="debug also logs pings, pulls and Failed reports",
    )
    sim.set_defaults(func=_cmd_simulate)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default at the end of its help line; none for options whose
    default is "not given" (their help says what that means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


_DESCRIPTION = (
    "Moves Taobao TMC messages (WebSocket, HTTP API or ONS) into Kafka or RocketMQ, "
    "exactly once where the sink allows it. Exit codes: 0 ok, 1 runtime failure, "
    "2 usage or configuration error."
)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="bridge.yaml", help="the bridge's YAML config")


def _dead_letters_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "dead-letters",
        help="work with the dead-letter topic (Kafka sink)",
        description="Work with the dead-letter topic of a Kafka sink.",
        formatter_class=_Help,
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    rep = actions.add_parser(
        "replay",
        help="route dead letters again through the current routing",
        description="Read the dead-letter topic (committed records only), rebuild each "
        "selected dead letter's message from its value and headers, route it through "
        "the current routing and, with --apply, write the results in Kafka transactions "
        "(transactional id <sink.kafka.transactional_id>-replay), each with a marker that "
        "keeps a later run from replaying the same dead letter again. Without --apply it "
        "is a dry run: it reads, reports and writes nothing. Dead letters the source "
        "could not decode, and cut ones, are skipped.",
        formatter_class=_Help,
    )
    _config_option(rep)
    rep.add_argument(
        "--since",
        metavar="TIME",
        help="only dead letters written at or after TIME: ISO 8601 "
        "(2025-01-31T08:00:00+08:00; without an offset local time), a duration before "
        "now (30m, 2h, 7d) or 'now' (default: the start of the topic)",
    )
    rep.add_argument(
        "--until",
        metavar="TIME",
        help="only dead letters written before TIME, same forms as --since "
        "(default: the end of the topic when the run starts)",
    )
    rep.add_argument(
        "--reason",
        metavar="TEXT",
        help="only dead letters whose tmc.dlq.reason contains TEXT, any case "
        "(default: every reason)",
    )
    rep.add_argument(
        "--limit", type=int, default=10_000, help="write at most this many records in one run"
    )
    mode = rep.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="read and report, write nothing (what happens without --apply too)",
    )
    mode.add_argument(
        "--apply", action="store_true", help="write the re-routed records (transactionally)"
    )
    rep.add_argument(
        "--list", action="store_true", help="one line per dead letter: where it is and its outcome"
    )
    rep.add_argument(
        "--timeout-s", type=float, default=10.0, help="time limit of each broker request"
    )
    rep.set_defaults(func=_cmd_dead_letters_replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmc-bridge", description=_DESCRIPTION, formatter_class=_Help
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tmc-bridge {__version__}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the bridge",
        description="Run the bridge until SIGTERM or SIGINT, then drain: exit 0 when "
        "everything committed was confirmed, 1 when the drain did not finish.",
        formatter_class=_Help,
    )
    _config_option(run)
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file (and, with --connect, reach source and sink)",
        description="Check the config file as run does before it starts anything; with "
        "--connect also log in to the source (TMC: one login per group, closed before "
        "any pull; tmc_http: one signed call that consumes nothing; ONS: the topics' "
        "routes) and reach the sink (Kafka: metadata and the topics, no transaction; "
        "RocketMQ: the topics' routes), one line each. Exit 0 only when all passed.",
        formatter_class=_Help,
    )
    _config_option(check)
    check.add_argument(
        "--connect",
        action="store_true",
        help="also reach the source and the sink; nothing is consumed or written",
    )
    check.add_argument(
        "--timeout-s", type=float, default=10.0, help="time limit of each connection attempt"
    )
    check.set_defaults(func=_cmd_check_config)

    _dead_letters_parser(sub)
    _simulate_parser(sub)

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
