"""Every broken config is refused by ``check-config`` and by ``run`` alike.

Each case: exit code 2 from both commands, the dotted key (or variable, or YAML line) in
stderr, no traceback, and the secret sentinel never in stdout or stderr. ``run`` must
refuse before it starts anything: the Bridge, logging setup and outgoing connections
are replaced by tripwires, and every address points at 127.0.0.1:1 anyway.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import app as app_mod
from bridge.cli import main
from bridge.errors import ConfigError
from bridge.observability import logging as obs_logging

SENTINEL = "S3CRET-SENTINEL"
SASL = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"}

BASE: dict[str, Any] = {
    "source": {
        "type": "tmc",
        "tmc": {"url": "ws://127.0.0.1:1/", "app_key": "12345678", "app_secret": SENTINEL},
    },
    "sink": {
        "type": "kafka",
        "kafka": {
            "bootstrap_servers": "127.0.0.1:1",
            "transactional_id": "tmc-bridge-test",
            # Ignored by librdkafka without SASL, but a value the output must never show.
            "extra": {"sasl.password": SENTINEL},
        },
    },
    "http": {"enabled": False},
}
ROCKETMQ = {
    "type": "rocketmq",
    "rocketmq": {
        "name_server": "127.0.0.1:1",
        "producer_group": "tmc_bridge",
        "access_key": "ak",
        "secret_key": SENTINEL,
    },
}
ONS = {
    "type": "ons",
    "ons": {
        "name_server": "127.0.0.1:1",
        "group_id": "CID_test",
        "topics": ["rmq_sys_jst_1"],
        "access_key": "ak",
        "secret_key": SENTINEL,
    },
}
ROCKETMQ_ROUTING = {"topics": {"*": "tmc_all"}, "dead_letter_topic": "tmc_dlq"}

Edit = Callable[[dict[str, Any]], object]


def put(path: str, value: object) -> Edit:
    """Set a dotted path (creating sections) in the document."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = doc
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = copy.deepcopy(value)

    return edit


def drop(path: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = doc
        for name in parents:
            node = node[name]
        del node[last]

    return edit


def extra(settings: Mapping[str, object]) -> Edit:
    return put("sink/kafka/extra", settings)


@dataclass(frozen=True)
class Case:
    id: str
    #: Edits of BASE, or the raw text of the file.
    doc: tuple[Edit, ...] | str
    #: Must appear in stderr: the dotted key, the variable, or the YAML position.
    expect: str
    env: dict[str, str] = field(default_factory=dict)


def case(id: str, expect: str, *edits: Edit, env: dict[str, str] | None = None) -> Case:
    return Case(id, edits, expect, env or {})


CASES = [
    # -- structure: unknown keys, wrong types, missing keys --------------------------
    case("unknown top-level key", "sourse", put("sourse", {})),
    case("unknown key in a section", "source.tmc.connectionz", put("source/tmc/connectionz", 2)),
    case(
        "unknown key two levels down",
        "pipeline.batch_max_mesages",
        put("pipeline/batch_max_mesages", 10),
    ),
    case("unknown key in sink.kafka", "sink.kafka.bootstrap", put("sink/kafka/bootstrap", "x")),
    case(
        "number as text", "pipeline.batch_max_messages", put("pipeline/batch_max_messages", "lots")
    ),
    case("bool as text", "log.message_ids", put("log/message_ids", "maybe")),
    case("missing app_key", "source.tmc.app_key", drop("source/tmc/app_key")),
    # -- TMC groups: the platform's name rules, and routes for groups that exist -------
    case("group over 32 characters", "source.tmc.group", put("source/tmc/group", "g" * 33)),
    case(
        "group starting with default",
        "source.tmc.group",
        put("source/tmc/group", "default_vip"),
    ),
    case(
        "group and groups both set",
        "source.tmc.groups",
        put("source/tmc/group", "vip"),
        put("source/tmc/groups", [{"name": "other"}]),
    ),
    case(
        "a group listed twice",
        "source.tmc.groups.1.name",
        put("source/tmc/groups", [{"name": "vip"}, {"name": "vip"}]),
    ),
    case(
        "a group of groups breaking the name rule",
        "source.tmc.groups.0.name",
        put("source/tmc/groups", [{"name": "defaultish"}]),
    ),
    case(
        "routes for a group the source does not have",
        "routing.groups.vip",
        put("routing/groups", {"vip": {"topics": {"*": "tmc.vip"}}}),
    ),
    case(
        "a group route to an invalid topic",
        "routing.groups.vip.topics.*",
        put("source/tmc/groups", [{"name": "vip"}]),
        put("routing/groups", {"vip": {"topics": {"*": "bad topic"}}}),
    ),
    case("missing sink section", "sink", drop("sink")),
    case(
        "missing transactional_id",
        "sink.kafka.transactional_id",
        drop("sink/kafka/transactional_id"),
    ),
    case("section of the wrong type", "source.tmc", put("source/tmc", "ws://127.0.0.1:1/")),
    case("pipeline is a list", "pipeline", put("pipeline", [1, 2])),
    case("wrong source type", "source.type", put("source/type", "kafka")),
    case("wrong sink type", "sink.type", put("sink/type", "pulsar")),
    case("type without its section", "sink.rocketmq", put("sink/type", "rocketmq")),
    # -- secrets -----------------------------------------------------------------------
    case("missing secret", "source.tmc.app_secret", drop("source/tmc/app_secret")),
    case("blank secret", "source.tmc.app_secret", put("source/tmc/app_secret", "  ")),
    case(
        "secret given twice",
        "source.tmc.app_secret",
        put("source/tmc/app_secret_file", "@TMP@/secret"),
    ),
    case(
        "unset environment variable",
        "source.tmc.app_secret: environment variable TMC_TEST_UNSET",
        put("source/tmc/app_secret", "${TMC_TEST_UNSET}"),
    ),
    case(
        "unreadable secret file",
        "source.tmc.app_secret_file",
        drop("source/tmc/app_secret"),
        put("source/tmc/app_secret_file", "@TMP@/no-such-file"),
    ),
    case(
        "secret file is a directory",
        "source.tmc.app_secret_file",
        drop("source/tmc/app_secret"),
        put("source/tmc/app_secret_file", "@TMP@"),
    ),
    case(
        "empty secret file",
        "source.tmc.app_secret_file",
        drop("source/tmc/app_secret"),
        put("source/tmc/app_secret_file", "@TMP@/empty"),
    ),
    case(
        "rocketmq access_key without secret",
        "sink.rocketmq.secret_key",
        put("sink", copy.deepcopy(ROCKETMQ)),
        put("routing", ROCKETMQ_ROUTING),
        drop("sink/rocketmq/secret_key"),
    ),
    # -- numbers -----------------------------------------------------------------------
    case(
        "negative batch size", "pipeline.batch_max_messages", put("pipeline/batch_max_messages", -1)
    ),
    case("port 70000", "http.port", put("http/port", 70000)),
    case("zero connections", "source.tmc.connections", put("source/tmc/connections", 0)),
    case(
        "infinite interval", "source.tmc.pull_interval_s", put("source/tmc/pull_interval_s", ".inf")
    ),
    case(
        "reconnect cap below floor",
        "source.tmc.reconnect_max_s",
        put("source/tmc/reconnect_min_s", 60),
        put("source/tmc/reconnect_max_s", 10),
    ),
    case(
        "transaction timeout below librdkafka's minimum",
        "sink.kafka.transaction_timeout_ms",
        put("sink/kafka/transaction_timeout_ms", 500),
    ),
    # -- routing -----------------------------------------------------------------------
    case("empty routing", "routing.topics", put("routing/topics", {})),
    case("invalid Kafka topic", "routing.topics.*", put("routing/topics", {"*": "tmc messages"})),
    case(
        "empty dead-letter topic", "routing.dead_letter_topic", put("routing/dead_letter_topic", "")
    ),
    case("Kafka topic '..'", "routing.dead_letter_topic", put("routing/dead_letter_topic", "..")),
    case(
        "dotted topic for RocketMQ",
        "routing.topics.*",
        put("sink", copy.deepcopy(ROCKETMQ)),
        put("routing/topics", {"*": "tmc.all"}),
    ),
    case(
        "key rule without fields",
        "routing.keys.taobao_trade_*",
        put("routing/keys", {"taobao_trade_*": []}),
    ),
    # -- Kafka: transactional id, bootstrap, extra ---------------------------------------
    case(
        "empty transactional_id",
        "sink.kafka.transactional_id",
        put("sink/kafka/transactional_id", ""),
    ),
    case(
        "blank transactional_id",
        "sink.kafka.transactional_id",
        put("sink/kafka/transactional_id", " "),
    ),
    case(
        "bootstrap port out of range",
        "sink.kafka.bootstrap_servers",
        put("sink/kafka/bootstrap_servers", "127.0.0.1:1,127.0.0.1:70000"),
    ),
    case(
        "bootstrap IPv6 without brackets",
        "sink.kafka.bootstrap_servers",
        put("sink/kafka/bootstrap_servers", "::1:9092"),
    ),
    case(
        "bootstrap prefix against security.protocol",
        "sink.kafka.bootstrap_servers",
        put("sink/kafka/bootstrap_servers", "SSL://127.0.0.1:1"),
    ),
    case(
        "unknown librdkafka property",
        "sink.kafka.extra.no.such.property",
        extra({"no.such.property": SENTINEL}),
    ),
    case(
        "librdkafka value of the wrong type",
        "sink.kafka.extra.linger.ms",
        extra({"linger.ms": "soon"}),
    ),
    case(
        "librdkafka value echoed by librdkafka",
        "sink.kafka.extra.security.protocol",
        extra({"security.protocol": SENTINEL}),
    ),
    case(
        "librdkafka combination",
        "sink.kafka.extra.message.timeout.ms",
        extra({"message.timeout.ms": 900_000}),
    ),
    case(
        "SASL PLAIN without username",
        "sink.kafka.extra.sasl.username",
        extra({**SASL, "sasl.password": SENTINEL}),
    ),
    case(
        "SASL SCRAM without password",
        "sink.kafka.extra.sasl.password",
        extra({**SASL, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u"}),
    ),
    case(
        "OIDC without client id",
        "sink.kafka.extra.sasl.oauthbearer.client.id",
        extra(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "OAUTHBEARER",
                "sasl.oauthbearer.method": "oidc",
                "sasl.oauthbearer.client.secret": SENTINEL,
                "sasl.oauthbearer.token.endpoint.url": "http://127.0.0.1:1/token",
            }
        ),
    ),
    case(
        "extra overrides a bridge setting",
        "sink.kafka.extra.enable.idempotence",
        extra({"enable.idempotence": False}),
    ),
    case("extra value is a list", "sink.kafka.extra.acks", extra({"acks": [1]})),
    case("extra callback", "sink.kafka.extra.error_cb", extra({"error_cb": "print"})),
    # -- URLs and address lists ----------------------------------------------------------
    case(
        "URL with a space and port 99999",
        "source.tmc.url",
        put("source/tmc/url", "ws://exa mple:99999/"),
    ),
    case(
        "URL with an unclosed IPv6 host", "source.tmc.url", put("source/tmc/url", "ws://[::1:99/")
    ),
    case(
        "URL with a port that is no number",
        "source.tmc.url",
        put("source/tmc/url", "ws://host:abc/"),
    ),
    case("URL with port 0", "source.tmc.url", put("source/tmc/url", "ws://127.0.0.1:0/")),
    case("URL of the wrong scheme", "source.tmc.url", put("source/tmc/url", "http://127.0.0.1:1/")),
    case(
        "URL with a password and a bad port",
        "source.tmc.url",
        put("source/tmc/url", f"ws://user:{SENTINEL}@127.0.0.1:70000/"),
    ),
    case(
        "name_server port out of range",
        "sink.rocketmq.name_server",
        put("sink", copy.deepcopy(ROCKETMQ)),
        put("routing", ROCKETMQ_ROUTING),
        put("sink/rocketmq/name_server", "127.0.0.1:1;127.0.0.1:99999"),
    ),
    case(
        "name_server_domain with a space",
        "sink.rocketmq.name_server_domain",
        put("sink", copy.deepcopy(ROCKETMQ)),
        put("routing", ROCKETMQ_ROUTING),
        drop("sink/rocketmq/name_server"),
        put("sink/rocketmq/name_server_domain", "http://exa mple:8080/nsaddr"),
    ),
    case(
        "ONS address server of the wrong scheme",
        "source.ons.name_server_domain",
        put("source", copy.deepcopy(ONS)),
        drop("source/ons/name_server"),
        put("source/ons/name_server_domain", "ftp://127.0.0.1:1/nsaddr"),
    ),
    # -- the file itself -------------------------------------------------------------------
    Case("YAML syntax error", "source:\n  tmc: [\n", "line 3"),
    Case("YAML tab indentation", "source:\n\ttmc: {}\n", "line 2"),
    Case(
        "YAML duplicate key",
        f"source:\n  tmc:\n    app_secret: a\n    app_secret: {SENTINEL}\n",
        "duplicate key",
    ),
    # An unquoted secret starting with "!" is a YAML tag: PyYAML names it in its error.
    Case("secret read as a YAML tag", f"source:\n  tmc:\n    app_secret: !{SENTINEL}\n", "line 3"),
    Case(
        "secret read as a YAML alias", f"source:\n  tmc:\n    app_secret: *{SENTINEL}\n", "line 3"
    ),
    Case("top level is a list", "- source\n- sink\n", "top level"),
    Case("empty file", "", "top level"),
    # -- the environment -------------------------------------------------------------------
    case(
        "invalid TMC_BRIDGE_LOG_LEVEL",
        "TMC_BRIDGE_LOG_LEVEL",
        env={"TMC_BRIDGE_LOG_LEVEL": "verbose"},
    ),
    case(
        "invalid TMC_BRIDGE_LOG_FORMAT",
        "TMC_BRIDGE_LOG_FORMAT",
        env={"TMC_BRIDGE_LOG_FORMAT": "xml"},
    ),
]


def render(doc: tuple[Edit, ...] | str, tmp: Path) -> str:
    if isinstance(doc, str):
        return doc
    data = copy.deepcopy(BASE)
    for edit in doc:
        edit(data)
    text = yaml.safe_dump(data, sort_keys=False)
    # safe_dump quotes ".inf" as a string; the case means YAML's infinity.
    return text.replace("'.inf'", ".inf").replace("@TMP@", str(tmp))


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Tripwires: anything ``run`` would start on the way to running a bridge."""
    started: list[str] = []

    class NoBridge:
        def __init__(self, *args: object, **kwargs: object) -> None:
            started.append("Bridge")
            raise AssertionError("run built a Bridge from a config it should refuse")

    def no_connect(self: socket.socket, *args: object) -> None:
        started.append("connect")
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(app_mod, "Bridge", NoBridge)
    monkeypatch.setattr(obs_logging, "configure", lambda *a: started.append("logging"))
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
    for name in (obs_logging.LEVEL_ENV, obs_logging.FORMAT_ENV, "TMC_TEST_UNSET"):
        monkeypatch.delenv(name, raising=False)
    yield started


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "secret").write_text("from-a-file\n")
    (tmp_path / "empty").write_text("")
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_broken_config_is_refused_with_its_key_and_without_secrets(
    bad: Case,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_start: list[str],
) -> None:
    for name, value in bad.env.items():
        monkeypatch.setenv(name, value)
    path = write(tmp_path, render(bad.doc, tmp_path))
    code = main([command, "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("tmc-bridge: "), err
    assert bad.expect in err, err
    assert "Traceback" not in out + err
    assert SENTINEL not in out + err
    assert no_start == []


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_missing_config_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_start: list[str]
) -> None:
    for command in ("check-config", "run"):
        assert main([command, "--config", str(tmp_path / "nope.yaml")]) == 2
        assert "cannot read config" in capsys.readouterr().err
    assert no_start == []


def test_a_config_error_while_building_the_bridge_exits_2_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """E.g. a secret file removed between the check and the construction."""

    class Vanished:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise ConfigError("source.tmc.app_secret_file: cannot read /run/x: gone")

    monkeypatch.setattr(app_mod, "Bridge", Vanished)
    monkeypatch.setattr(obs_logging, "configure", lambda *a: None)
    path = write(tmp_path, render((), tmp_path))
    assert main(["run", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err == "tmc-bridge: source.tmc.app_secret_file: cannot read /run/x: gone\n"
    assert "Traceback" not in out + err


# -- what passes -----------------------------------------------------------------------

GOOD = [
    ("IPv6 URL", (put("source/tmc/url", "ws://[::1]:8765/"),)),
    ("wss URL with a path", (put("source/tmc/url", "wss://mc.api.taobao.com/path?x=1"),)),
    ("URL with user info", (put("source/tmc/url", f"ws://user:{SENTINEL}@127.0.0.1:1/"),)),
    (
        "bootstrap list",
        (put("sink/kafka/bootstrap_servers", "127.0.0.1:1, [::1]:2,kafka-0.kafka_svc.local:9093"),),
    ),
    ("bootstrap without port", (put("sink/kafka/bootstrap_servers", "kafka"),)),
    (
        "bootstrap with matching prefix",
        (put("sink/kafka/bootstrap_servers", "PLAINTEXT://127.0.0.1:1"),),
    ),
    (
        "SASL PLAIN complete",
        (extra({**SASL, "sasl.username": "u", "sasl.password": SENTINEL}),),
    ),
    (
        "secret from a file",
        (drop("source/tmc/app_secret"), put("source/tmc/app_secret_file", "@TMP@/secret")),
    ),
    (
        "routing as ordered list",
        (put("routing/topics", [{"taobao_trade_*": "tmc.trade"}, {"*": "tmc.other"}]),),
    ),
]


@pytest.mark.parametrize("edits", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_valid_configs_pass_check_config(
    edits: tuple[Edit, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_start: list[str],
) -> None:
    path = write(tmp_path, render(edits, tmp_path))
    code = main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("config ok: ")
    assert SENTINEL not in out + err
    assert no_start == []


def test_run_starts_a_bridge_for_a_valid_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[object] = []

    class FakeBridge:
        def __init__(self, config: object) -> None:
            built.append(config)

        def request_stop(self) -> None:
            pass

        async def run(self) -> bool:
            return True

    monkeypatch.setattr(app_mod, "Bridge", FakeBridge)
    monkeypatch.setattr(obs_logging, "configure", lambda *a: None)
    path = write(tmp_path, render((put("source/tmc/url", "ws://[::1]:1/"),), tmp_path))
    assert main(["run", "--config", str(path)]) == 0
    assert len(built) == 1
    assert SENTINEL not in "".join(capsys.readouterr())


def test_check_config_builds_librdkafka_settings_without_touching_the_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """librdkafka gets no broker, and OIDC's token request is replaced (checked here with
    a listener standing in for both the broker and the token endpoint)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.5)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        oidc = {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER",
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.client.id": "bridge",
            "sasl.oauthbearer.client.secret": SENTINEL,
            "sasl.oauthbearer.token.endpoint.url": f"http://{address}/token",
        }
        edits = (put("sink/kafka/bootstrap_servers", address), extra(oidc))
        path = write(tmp_path, render(edits, tmp_path))
        assert main(["check-config", "--config", str(path)]) == 0, capsys.readouterr().err
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.parametrize(
    ("level", "fmt"), [("", ""), ("DEBUG", "json"), (" warning ", "Console"), ("error", "auto")]
)
def test_log_variables_accept_what_the_config_accepts(level: str, fmt: str) -> None:
    env = {obs_logging.LEVEL_ENV: level, obs_logging.FORMAT_ENV: fmt}
    chosen = obs_logging.settings("info", "auto", env=env)
    assert chosen == ((level.strip() or "info").lower(), (fmt or "auto").lower())


def test_a_yaml_error_never_shows_the_line(tmp_path: Path) -> None:
    from bridge import config as cfgmod

    path = tmp_path / "c.yaml"
    path.write_text(f"source:\n  tmc:\n    app_secret: {SENTINEL}: x\n")
    with pytest.raises(ConfigError) as info:
        cfgmod.load(path)
    text = str(info.value)
    assert "line 3, column" in text and "mapping values are not allowed" in text
    assert SENTINEL not in text


def test_merge_keys_override_without_counting_as_duplicates(tmp_path: Path) -> None:
    # A mapping that merges an anchor and overrides one of its keys, itself merged
    # elsewhere: PyYAML flattens it before it is built, which must not look like a key
    # given twice. A real duplicate in the same document is still refused.
    from bridge.config.loading import _Loader

    text = "base: &base {k: 1, j: 1}\na:\n  b: &m\n    <<: *base\n    k: 2\nc:\n  <<: *m\n"
    assert yaml.load(text, Loader=_Loader)["c"] == {"k": 2, "j": 1}
    with pytest.raises(yaml.YAMLError, match="duplicate key"):
        yaml.load(text + "d:\n  x: 1\n  x: 2\n", Loader=_Loader)
