"""Key extraction, topic routing, dead-lettering and config validation (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge import config as cfgmod
from bridge.config import RoutingConfig
from bridge.errors import ConfigError
from bridge.headers import H_DLQ_REASON, H_MESSAGE_ID, H_TOPIC
from bridge.model import SourceMessage
from bridge.pipeline.routing import Router

ROOT = Path(__file__).parent.parent.parent


def msg(topic: str, content: str, **kw: object) -> SourceMessage:
    return SourceMessage(
        source="tmc",
        message_id=2131800080537681927,
        topic=topic,
        content=content.encode(),
        user_id=7,
        publish_time_ms=1,
        publisher="12497914",
        **kw,
    )  # type: ignore[arg-type]


ROUTING = RoutingConfig(
    topics={"taobao_trade_*": "tmc.trade", "taobao_refund_*": "tmc.refund", "*": "tmc.other"},
    keys={
        "taobao_trade_*": ["tid"],
        "taobao_refund_*": ["tid", "refund_id"],
        "taobao_item_*": ["num_iid"],
    },
)


def test_trade_is_keyed_by_exact_tid_and_routed() -> None:
    rec = Router(ROUTING).route(msg("taobao_trade_TradeCreate", '{"tid":4123456789012345678}'))
    assert (rec.topic, rec.key) == ("tmc.trade", b"4123456789012345678")
    assert rec.value == b'{"tid":4123456789012345678}'
    headers = dict(rec.headers)
    assert headers[H_TOPIC] == b"taobao_trade_TradeCreate"
    assert headers[H_MESSAGE_ID] == b"2131800080537681927"
    assert rec.dead_letter_reason is None


def test_refund_falls_back_to_second_field_and_items_use_num_iid() -> None:
    router = Router(ROUTING)
    assert router.route(msg("taobao_refund_RefundCreated", '{"refund_id":"181"}')).key == b"181"
    item = router.route(msg("taobao_item_ItemUpdate", '{"num_iid":15380658823}'))
    assert (item.topic, item.key) == ("tmc.other", b"15380658823")


def test_topic_without_key_rule_is_unkeyed() -> None:
    rec = Router(ROUTING).route(msg("taobao_fenxiao_X", '{"a":1}'))
    assert rec.key is None and rec.dead_letter_reason is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"oid":1}', "none of the key"),
        ('{"tid":1.5}', "is a float"),
    ],
)
def test_permanent_problems_go_to_the_dead_letter_topic(content: str, reason: str) -> None:
    rec = Router(ROUTING).route(msg("taobao_trade_TradeCreate", content))
    assert rec.topic == "tmc.dlq"
    assert rec.dead_letter_reason is not None and reason in rec.dead_letter_reason
    assert reason in dict(rec.headers)[H_DLQ_REASON].decode()
    assert rec.value == content.encode()


def test_missing_key_policies() -> None:
    for policy, key in (("dataid", b"99"), ("userid", b"7"), ("unkeyed", None)):
        routing = ROUTING.model_copy(update={"missing_key": policy})
        rec = Router(routing).route(msg("taobao_trade_TradeCreate", "{}", data_id=99))
        assert (rec.topic, rec.key) == ("tmc.trade", key)


def test_no_route_is_dead_lettered() -> None:
    routing = RoutingConfig(topics={"taobao_trade_*": "t"})
    rec = Router(routing).route(msg("taobao_item_X", "{}"))
    assert rec.topic == "tmc.dlq" and "no route" in str(rec.dead_letter_reason)


def test_dead_letter_of_a_refused_record_is_truncated() -> None:
    routing = ROUTING.model_copy(update={"dead_letter_max_value_bytes": 10})
    router = Router(routing)
    rec = router.route(msg("taobao_trade_TradeCreate", '{"tid":1,"pad":"' + "x" * 100 + '"}'))
    dead = router.dead_letter(rec, "MSG_SIZE_TOO_LARGE")
    headers = dict(dead.headers)
    assert dead.topic == "tmc.dlq" and len(dead.value) == 10 and dead.key == b"1"
    assert headers["tmc.dlq.truncated"] == b"true"
    assert headers["tmc.dlq.target_topic"] == b"tmc.trade"


def test_envelope_mode_writes_ids_as_strings() -> None:

    rec = Router(ROUTING, envelope=True).route(msg("taobao_trade_TradeCreate", '{"tid":1}'))
    doc = json.loads(rec.value)
    assert doc["id"] == "2131800080537681927" and doc["content"] == '{"tid":1}'


BASE = {
    "source": {"type": "tmc", "tmc": {"app_key": "1", "app_secret": "${SECRET}"}},
    "sink": {
        "type": "kafka",
        "kafka": {"bootstrap_servers": "b:9092", "transactional_id": "tmc-${HOSTNAME:-local}"},
    },
}


def test_env_interpolation_with_default() -> None:
    cfg = cfgmod.parse(BASE, env={"SECRET": "s3cret"})
    assert cfg.source.tmc.secret() == "s3cret"
    assert cfg.sink.kafka.transactional_id == "tmc-local"
    assert "s3cret" not in repr(cfg)


def test_missing_env_var_names_key_and_variable() -> None:
    with pytest.raises(ConfigError, match=r"source\.tmc\.app_secret: environment variable SECRET"):
        cfgmod.parse(BASE, env={})


def test_unknown_and_bad_keys_are_named_and_secret_not_echoed() -> None:
    bad = {
        **BASE,
        "source": {
            "tmc": {"app_key": "1", "app_secret": "TOPSECRET", "connectionz": 2, "connections": 0}
        },
    }
    with pytest.raises(ConfigError) as info:
        cfgmod.parse(bad, env={})
    text = str(info.value)
    assert "source.tmc.connectionz" in text and "source.tmc.connections" in text
    assert "TOPSECRET" not in text


def test_secret_file_and_exactly_one_secret(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("from-file\n")
    doc = {**BASE, "source": {"tmc": {"app_key": "1", "app_secret_file": str(secret)}}}
    assert cfgmod.parse(doc, env={}).source.tmc.secret() == "from-file"
    both = {
        **BASE,
        "source": {"tmc": {"app_key": "1", "app_secret": "x", "app_secret_file": str(secret)}},
    }
    with pytest.raises(ConfigError, match="exactly one"):
        cfgmod.parse(both, env={})


def test_extra_may_not_override_bridge_owned_settings() -> None:
    doc = {
        **BASE,
        "sink": {
            "kafka": {
                "bootstrap_servers": "b",
                "transactional_id": "t",
                "extra": {"enable.idempotence": False},
            }
        },
    }
    with pytest.raises(ConfigError, match=r"sink\.kafka\.extra"):
        cfgmod.parse(doc, env={"SECRET": "x"})


def test_shipped_bridge_yaml_is_valid() -> None:
    cfg = cfgmod.load(ROOT / "bridge.yaml", env={"TMC_APP_SECRET": "x", "HOSTNAME": "pod-0"})
    assert cfg.routing.keys["taobao_trade_*"] == ["tid"]


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("source: [\n")
    with pytest.raises(ConfigError, match="line 2"):
        cfgmod.load(path)


def test_routing_maps_may_be_ordered_lists() -> None:
    """Helm's toYaml sorts mapping keys ("*" first); the list form keeps the order."""
    cfg = RoutingConfig.model_validate(
        {
            "topics": [{"taobao_trade_*": "trade"}, {"*": "other"}],
            "keys": [{"taobao_trade_*": ["tid"]}],
        }
    )
    assert list(cfg.topics.items()) == [("taobao_trade_*", "trade"), ("*", "other")]
    assert cfg.keys == {"taobao_trade_*": ["tid"]}
    for bad in ([{"a": "x", "b": "y"}], [{"a": "x"}, {"a": "y"}], ["a"]):
        with pytest.raises(ValidationError):
            RoutingConfig.model_validate({"topics": bad})
