"""Filters and load shedding: the pure decisions (examples and properties), the config
errors, and what the pipeline does with a verdict (drop: confirmed at once and released;
divert: written to ``divert_to`` with the rule's header)."""

from __future__ import annotations

import asyncio
import copy
import fnmatch
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import config as cfgmod
from bridge.cli import main
from bridge.config import PipelineConfig, RoutingConfig
from bridge.config.filters import FilterRule
from bridge.errors import ConfigError
from bridge.headers import H_FILTER_RULE
from bridge.model import Delivery, SourceMessage
from bridge.observability.metrics import Metrics
from bridge.pipeline import filters as filters_mod
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.filters import Filters, Verdict
from bridge.pipeline.routing import Router
from tests.unit.test_pipeline import Ack, ScriptedSink

VIP_ID, VIP_NICK = 2200000001, "vip_shop"


def rule(**kw: Any) -> FilterRule:
    return FilterRule.model_validate({"name": "r", "action": "drop", **kw})


def msg(
    topic: str = "taobao_item_ItemUpdate",
    user_id: int | None = 7,
    nick: str | None = "small_shop",
    i: int = 1,
    content: bytes = b'{"num_iid": 5, "tid": 9}',
) -> SourceMessage:
    return SourceMessage("tmc", i, topic, content, user_id=user_id, nick=nick)


# -- decisions ---------------------------------------------------------------------------


def test_no_rule_matches_passes() -> None:
    f = Filters([rule(topics=["taobao_item_*"])])
    assert f.decide(msg("taobao_trade_TradeCreate"), 1) is None


def test_topic_rule_drops_with_the_reason_topic() -> None:
    f = Filters([rule(name="items", topics=["taobao_item_*"])])
    assert f.decide(msg(), 1) == Verdict("drop", "items", "topic", "topic", None)


def test_globs_are_case_sensitive_like_routing() -> None:
    f = Filters([rule(topics=["taobao_item_*"])])
    assert f.decide(msg("TAOBAO_ITEM_ItemUpdate"), 1) is None


def test_first_matching_rule_wins() -> None:
    f = Filters(
        [
            rule(name="first", topics=["taobao_trade_*"]),
            rule(name="second", topics=["taobao_*"], action="divert", divert_to="low"),
            rule(name="third", topics=["*"]),
        ]
    )
    assert f.decide(msg("taobao_trade_TradeCreate"), 1).rule == "first"  # type: ignore[union-attr]
    second = f.decide(msg("taobao_item_ItemUpdate"), 1)
    assert second is not None and (second.rule, second.action) == ("second", "divert")
    assert second.divert_to == "low"
    assert f.decide(msg("jushita_x"), 1).rule == "third"  # type: ignore[union-attr]


def test_threshold_applies_only_above_and_says_so() -> None:
    f = Filters([rule(name="shed", topics=["taobao_item_*"], when_in_flight_above=100)])
    assert f.decide(msg(), 100) is None
    verdict = f.decide(msg(), 101)
    assert verdict is not None
    assert verdict.reason == "topic; backlog above 100"
    assert verdict.label == "topic_backlog"


def test_a_rule_below_its_threshold_lets_the_next_rule_decide() -> None:
    f = Filters(
        [
            rule(name="shed", topics=["*"], when_in_flight_above=10),
            rule(name="aside", sellers={"deny": [7]}, action="divert", divert_to="low"),
        ]
    )
    assert f.decide(msg(), 5).rule == "aside"  # type: ignore[union-attr]
    assert f.decide(msg(), 11).rule == "shed"  # type: ignore[union-attr]


def test_allow_list_matches_sellers_not_listed_by_id_or_nick() -> None:
    f = Filters([rule(sellers={"allow": [VIP_ID, VIP_NICK]})])
    verdict = f.decide(msg(user_id=7, nick="small"), 1)
    assert verdict is not None
    assert (verdict.reason, verdict.label) == ("seller not in allow-list", "seller_allow")
    assert f.decide(msg(user_id=VIP_ID, nick="renamed"), 1) is None  # listed by id
    assert f.decide(msg(user_id=8, nick=VIP_NICK), 1) is None  # listed by nick
    assert f.decide(msg(user_id=None, nick=VIP_NICK), 1) is None


def test_deny_list_matches_listed_sellers() -> None:
    f = Filters([rule(sellers={"deny": [7, "noisy"]}, action="divert", divert_to="low")])
    verdict = f.decide(msg(user_id=7, nick="x"), 1)
    assert verdict is not None
    assert (verdict.reason, verdict.label) == ("seller in deny-list", "seller_deny")
    assert f.decide(msg(user_id=1, nick="noisy"), 1) is not None
    assert f.decide(msg(user_id=1, nick="quiet"), 1) is None


def test_a_message_without_a_comparable_seller_never_matches_a_seller_rule() -> None:
    """Dropping is for good: a message that cannot be told apart is kept."""
    by_id = Filters([rule(sellers={"allow": [VIP_ID]})])
    assert by_id.decide(msg(user_id=None, nick="anyone"), 1) is None
    by_nick = Filters([rule(sellers={"allow": [VIP_NICK]})])
    assert by_nick.decide(msg(user_id=7, nick=None), 1) is None
    assert by_nick.decide(msg(user_id=None, nick=None), 1) is None
    deny = Filters([rule(sellers={"deny": [7]})])
    assert deny.decide(msg(user_id=None, nick="7"), 1) is None  # "7" would be a nick


def test_a_rule_with_topics_and_sellers_needs_both() -> None:
    f = Filters([rule(topics=["taobao_item_*"], sellers={"deny": [7]})])
    assert f.decide(msg("taobao_item_ItemUpdate", user_id=7), 1) is not None
    assert f.decide(msg("taobao_trade_TradeCreate", user_id=7), 1) is None
    assert f.decide(msg("taobao_item_ItemUpdate", user_id=8), 1) is None


def test_the_topic_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filters_mod, "_CACHE_MAX", 3)
    f = Filters([rule(topics=["a*"])])
    for i in range(10):
        assert (f.decide(msg(f"a{i}"), 1) is not None) is True
        assert f.decide(msg(f"b{i}"), 1) is None
    assert len(f._cache) <= 3


def test_no_rules_is_falsy_and_names_are_listed() -> None:
    assert not Filters([])
    assert Filters([rule(name="x", topics=["*"])]).names == ["x"]


# -- properties ----------------------------------------------------------------------------

_TOPICS = ["taobao_item_ItemUpdate", "taobao_trade_TradeCreate", "taobao_refund_X", "jst_a", "*x"]
_GLOBS = ["taobao_item_*", "taobao_*", "*", "*Create", "jst_?", "taobao_[tr]*", "[*]x"]
_NICKS = ["a", "b", "vip"]


@st.composite
def rules(draw: st.DrawFn) -> list[FilterRule]:
    out = []
    for i in range(draw(st.integers(0, 4))):
        doc: dict[str, Any] = {"name": f"r{i}", "action": draw(st.sampled_from(["drop", "divert"]))}
        if doc["action"] == "divert":
            doc["divert_to"] = f"t{i}"
        sellers = draw(
            st.none()
            | st.lists(st.integers(1, 4) | st.sampled_from(_NICKS), min_size=1, max_size=3)
        )
        topics = draw(st.none() | st.lists(st.sampled_from(_GLOBS), min_size=1, max_size=2))
        if topics is None and sellers is None:
            topics = ["*"]
        if topics is not None:
            doc["topics"] = topics
        if sellers is not None:
            doc["sellers"] = {draw(st.sampled_from(["allow", "deny"])): sellers}
        if draw(st.booleans()):
            doc["when_in_flight_above"] = draw(st.integers(1, 20))
        out.append(FilterRule.model_validate(doc))
    return out


messages = st.builds(
    msg,
    topic=st.sampled_from(_TOPICS) | st.text(max_size=8),
    user_id=st.none() | st.integers(1, 5),
    nick=st.none() | st.sampled_from([*_NICKS, "other"]),
)


def reference(rules: list[FilterRule], m: SourceMessage, in_flight: int) -> str | None:
    """The rules as the README states them, written plainly."""
    for r in rules:
        if r.topics is not None and not any(fnmatch.fnmatchcase(m.topic, p) for p in r.topics):
            continue
        if r.when_in_flight_above is not None and in_flight <= r.when_in_flight_above:
            continue
        if r.sellers is not None:
            listed = r.sellers.allow if r.sellers.allow is not None else r.sellers.deny or []
            ids = {s for s in listed if isinstance(s, int)}
            nicks = {s for s in listed if isinstance(s, str)}
            comparable = (ids and m.user_id is not None) or (nicks and m.nick is not None)
            hit = m.user_id in ids or m.nick in nicks
            if r.sellers.allow is not None and (not comparable or hit):
                continue
            if r.sellers.deny is not None and not hit:
                continue
        return r.name
    return None


@settings(max_examples=400, deadline=None)
@given(rules(), st.lists(messages, min_size=1, max_size=6), st.integers(0, 25))
def test_decisions_agree_with_the_plain_reading_of_the_rules(
    rs: list[FilterRule], ms: list[SourceMessage], in_flight: int
) -> None:
    f = Filters(rs)
    for m in ms * 2:  # the second pass is served from the topic cache
        verdict = f.decide(m, in_flight)
        assert (verdict.rule if verdict else None) == reference(rs, m, in_flight)
        if verdict is not None:
            r = next(r for r in rs if r.name == verdict.rule)
            assert verdict.action == r.action and verdict.divert_to == r.divert_to
            assert verdict.label.endswith("_backlog") == (r.when_in_flight_above is not None)


@settings(max_examples=300, deadline=None)
@given(rules(), messages, st.integers(0, 25))
def test_a_bigger_backlog_never_lets_more_through(
    rs: list[FilterRule], m: SourceMessage, in_flight: int
) -> None:
    f = Filters(rs)
    if f.decide(m, in_flight) is not None:
        assert f.decide(m, in_flight + 1) is not None


# -- config --------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "source": {"type": "tmc", "tmc": {"app_key": "12345678", "app_secret": "s"}},
    "sink": {"type": "kafka", "kafka": {"bootstrap_servers": "k:9092", "transactional_id": "t"}},
    "pipeline": {"max_in_flight": 1000},
}
GOOD = {"name": "items", "topics": ["taobao_item_*"], "action": "drop"}


def parse(*filters: dict[str, Any], **top: Any) -> cfgmod.BridgeConfig:
    doc = copy.deepcopy(BASE)
    doc.update(copy.deepcopy(top))
    doc["filters"] = list(filters)
    return cfgmod.parse(doc, env={})


BAD: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    ("unknown key", [{**GOOD, "when": 3}], {}, "filters.0.when: "),
    ("missing name", [{"topics": ["*"], "action": "drop"}], {}, "filters.0.name: "),
    ("name with a space", [{**GOOD, "name": "my rule"}], {}, "filters.0.name: use 1 to 40"),
    ("name too long", [{**GOOD, "name": "x" * 41}], {}, "filters.0.name: "),
    ("upper-case name", [{**GOOD, "name": "Items"}], {}, "filters.0.name: "),
    (
        "name twice",
        [GOOD, {**GOOD, "topics": ["x"]}],
        {},
        "filters.1.name: 'items' is the name of filters.0 too",
    ),
    ("missing action", [{"name": "a", "topics": ["*"]}], {}, "filters.0.action: "),
    ("unknown action", [{**GOOD, "action": "skip"}], {}, "filters.0.action: "),
    ("empty topics", [{**GOOD, "topics": []}], {}, "filters.0.topics: list at least one"),
    ("blank pattern", [{**GOOD, "topics": [" "]}], {}, "filters.0.topics: a pattern is empty"),
    ("topics not a list", [{**GOOD, "topics": "taobao_*"}], {}, "filters.0.topics: "),
    ("no condition", [{"name": "a", "action": "drop"}], {}, "filters.0.topics: give topics or"),
    (
        "allow and deny",
        [{**GOOD, "sellers": {"allow": [1], "deny": [2]}}],
        {},
        "filters.0.sellers: give exactly one of allow and deny",
    ),
    ("neither allow nor deny", [{**GOOD, "sellers": {}}], {}, "filters.0.sellers: give exactly"),
    ("empty allow", [{**GOOD, "sellers": {"allow": []}}], {}, "filters.0.sellers.allow: list"),
    (
        "boolean seller",
        [{**GOOD, "sellers": {"deny": [1, True]}}],
        {},
        "filters.0.sellers.deny: item 1: a seller is a user id",
    ),
    (
        "float seller",
        [{**GOOD, "sellers": {"deny": [2.2e9]}}],
        {},
        "filters.0.sellers.deny: item 0",
    ),
    (
        "negative id",
        [{**GOOD, "sellers": {"allow": [-5]}}],
        {},
        "filters.0.sellers.allow: item 0: a user id is a positive integer",
    ),
    ("blank nick", [{**GOOD, "sellers": {"allow": [" "]}}], {}, "filters.0.sellers.allow: item 0"),
    ("sellers not a list", [{**GOOD, "sellers": {"allow": 5}}], {}, "filters.0.sellers.allow: "),
    ("unknown sellers key", [{**GOOD, "sellers": {"alow": [1]}}], {}, "filters.0.sellers.alow: "),
    ("threshold 0", [{**GOOD, "when_in_flight_above": 0}], {}, "filters.0.when_in_flight_above"),
    (
        "threshold at max_in_flight",
        [{**GOOD, "when_in_flight_above": 1000}],
        {},
        "filters.0.when_in_flight_above: 1000 can never be exceeded: the pipeline holds at "
        "most pipeline.max_in_flight (1000)",
    ),
    (
        "threshold above the default max_in_flight",
        [{**GOOD, "when_in_flight_above": 50_000}],
        {"pipeline": {}},
        "filters.0.when_in_flight_above: 50000 can never be exceeded",
    ),
    (
        "divert without divert_to",
        [{**GOOD, "action": "divert"}],
        {},
        "filters.0.divert_to: required when action is divert",
    ),
    (
        "drop with divert_to",
        [{**GOOD, "divert_to": "low"}],
        {},
        "filters.0.divert_to: only for action divert",
    ),
    (
        "invalid Kafka topic",
        [GOOD, {"name": "b", "topics": ["*"], "action": "divert", "divert_to": "low priority"}],
        {},
        "filters.1.divert_to: ",
    ),
    (
        "dotted topic for RocketMQ",
        [{**GOOD, "action": "divert", "divert_to": "tmc.low"}],
        {
            "sink": {
                "type": "rocketmq",
                "rocketmq": {"name_server": "127.0.0.1:9876", "producer_group": "g"},
            },
            "routing": {"topics": {"*": "tmc_all"}, "dead_letter_topic": "tmc_dlq"},
        },
        "filters.0.divert_to: ",
    ),
    ("filters not a list", [], {"filters": {"name": "x"}}, "filters: "),
]


@pytest.mark.parametrize(("rules_", "top", "expect"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_rule_is_refused_naming_its_key(
    rules_: list[dict[str, Any]], top: dict[str, Any], expect: str
) -> None:
    doc = copy.deepcopy(BASE)
    doc.update(copy.deepcopy(top))
    doc.setdefault("filters", rules_)
    with pytest.raises(ConfigError) as info:
        cfgmod.parse(doc, env={})
    assert expect in str(info.value)


def test_good_rules_parse_and_the_example_file_is_valid() -> None:
    cfg = parse(
        GOOD,
        {"name": "vip", "sellers": {"allow": [VIP_ID, VIP_NICK]}, "action": "divert"}
        | {"divert_to": "tmc.low_priority", "when_in_flight_above": 999},
    )
    assert [r.name for r in cfg.filters] == ["items", "vip"]
    assert cfg.filters[1].sellers is not None and cfg.filters[1].sellers.allow == [
        VIP_ID,
        VIP_NICK,
    ]
    assert parse().filters == []
    example = Path(__file__).resolve().parents[2] / "examples" / "bridge-shedding.yaml"
    loaded = cfgmod.load(example, env={"TMC_APP_KEY": "1", "TMC_APP_SECRET": "s"})
    assert [r.action for r in loaded.filters] == ["drop", "divert"]


def test_check_config_refuses_a_bad_rule_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        "source: {type: tmc, tmc: {app_key: '1', app_secret: s}}\n"
        "sink: {type: kafka, kafka: {bootstrap_servers: 'k:9092', transactional_id: t}}\n"
        "filters:\n  - {name: a, topics: ['*'], action: divert}\n"
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "filters.0.divert_to: required when action is divert" in err
    assert "Traceback" not in err


# -- the pipeline ----------------------------------------------------------------------------


def pipeline(sink: ScriptedSink, *rules_: dict[str, Any], **cfg: Any) -> Pipeline:
    base = {"batch_max_messages": 4, "batch_linger_ms": 0, "retry_backoff_min_s": 0.01}
    routing = RoutingConfig(topics={"taobao_trade_*": "trade", "*": "other"})
    return Pipeline(
        PipelineConfig(**{"retry_backoff_max_s": 0.02, **base, **cfg}),
        Router(routing),
        sink,
        metrics=Metrics(),
        filters=Filters([FilterRule.model_validate(r) for r in rules_]),
    )


def filtered(p: Pipeline, rule: str, action: str, reason: str) -> float:
    value = p.metrics.registry.get_sample_value(
        "tmc_bridge_filter_messages_total", {"rule": rule, "action": action, "reason": reason}
    )
    return value or 0.0


async def drain(p: Pipeline) -> None:
    p.close()
    await asyncio.wait_for(p.run(), 10)


async def test_a_drop_is_confirmed_at_once_counted_logged_and_never_written() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = pipeline(sink, {"name": "items", "topics": ["taobao_item_*"], "action": "drop"})
    with structlog.testing.capture_logs() as logs:
        await p.submit(Delivery(msg("taobao_item_ItemUpdate", i=1), [Ack(log, 1)]))
    assert log == [("confirm", 1)]  # before any commit
    assert p.in_flight == 0  # released from the ledger
    await p.submit(Delivery(msg("taobao_trade_TradeCreate", i=2), [Ack(log, 2)]))
    await drain(p)
    assert [r.topic for r in sink.committed] == ["trade"]
    assert log == [("confirm", 1), ("confirm", 2)]
    assert (p.stats.filter_dropped, p.stats.received, p.stats.committed) == (1, 2, 1)
    assert filtered(p, "items", "drop", "topic") == 1
    dropped = [e for e in logs if e["event"] == "message dropped by a filter"]
    assert dropped == [
        {
            "event": "message dropped by a filter",
            "log_level": "debug",
            "message_id": 1,
            "topic": "taobao_item_ItemUpdate",
            "rule": "items",
            "reason": "topic",
        }
    ]


async def test_a_redelivery_of_a_dropped_message_is_decided_again() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = pipeline(sink, {"name": "items", "topics": ["taobao_item_*"], "action": "drop"})
    await p.submit(Delivery(msg(i=1), [Ack(log, 1)]))
    await p.submit(Delivery(msg(i=1), [Ack(log, 1)]))
    assert log == [("confirm", 1), ("confirm", 1)]
    assert p.stats.filter_dropped == 2 and p.stats.duplicates_committed == 0
    await drain(p)
    assert sink.committed == []


async def test_divert_keeps_key_value_and_headers_and_names_the_rule() -> None:
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    p = pipeline(
        sink,
        {"name": "aside", "sellers": {"deny": [7]}, "action": "divert", "divert_to": "low"},
    )
    trade = b'{"tid": 42}'
    from_seven = msg("taobao_trade_TradeCreate", user_id=7, content=trade)
    await p.submit(Delivery(from_seven, [Ack(log, 1)]))
    await p.submit(Delivery(msg("taobao_trade_TradeCreate", user_id=8, i=2, content=trade)))
    await drain(p)
    diverted, passed = sink.committed
    assert (diverted.topic, diverted.key, diverted.value) == ("low", b"42", trade)
    assert (passed.topic, passed.key) == ("trade", b"42")
    routed = Router(RoutingConfig(topics={"*": "x"})).route(from_seven)
    assert diverted.headers == (*routed.headers, (H_FILTER_RULE, b"aside"))
    assert H_FILTER_RULE not in dict(passed.headers)
    assert log == [("confirm", 1)]  # confirmed after its commit, like any other
    assert p.stats.filter_diverted == 1
    assert filtered(p, "aside", "divert", "seller_deny") == 1


async def test_a_dead_letter_is_not_diverted_and_malformed_input_is_not_filtered() -> None:
    sink = ScriptedSink()
    p = pipeline(
        sink,
        {"name": "all", "topics": ["taobao_trade_*"], "action": "divert", "divert_to": "low"},
        {"name": "drop-rest", "topics": ["*"], "action": "drop"},
    )
    await p.submit(Delivery(msg("taobao_trade_TradeCreate", content=b"{oops")))
    bad = msg("jst_x", i=2)
    bad.malformed = "could not decode"
    await p.submit(Delivery(bad))
    await drain(p)
    assert [r.topic for r in sink.committed] == ["tmc.dlq", "tmc.dlq"]
    assert p.stats.filter_diverted == 0 and p.stats.filter_dropped == 0


async def test_shedding_applies_only_while_the_backlog_is_above_the_threshold() -> None:
    """The sink hangs: held deliveries pile up; item events beyond the threshold are
    dropped, the ones before it and every trade event are held for the sink."""
    log: list[tuple[str, int]] = []
    sink = ScriptedSink()
    sink.gate.clear()
    p = pipeline(
        sink,
        {"name": "shed", "topics": ["taobao_item_*"], "when_in_flight_above": 3, "action": "drop"},
        max_in_flight=10,
    )
    runner = asyncio.create_task(p.run())
    topics = ["taobao_trade_TradeCreate", "taobao_item_ItemUpdate"] * 4
    for i, topic in enumerate(topics):
        await p.submit(Delivery(msg(topic, i=i), [Ack(log, i)]))
    # Held when decided: 1 trade, 2 item, 3 trade, 4 item(drop), 4 trade, 5 item(drop)...
    assert sorted(i for _, i in log) == [3, 5, 7]
    assert filtered(p, "shed", "drop", "topic_backlog") == 3
    sink.gate.set()
    await _until(lambda: p.in_flight == 0)
    await p.submit(Delivery(msg("taobao_item_ItemUpdate", i=100), [Ack(log, 100)]))
    await drain(p)
    await asyncio.wait_for(runner, 5)
    ids = [int(dict(r.headers)["tmc.message_id"]) for r in sink.committed]
    assert ids == [0, 1, 2, 4, 6, 100]  # below the threshold again: items pass
    assert sorted(i for _, i in log) == [0, 1, 2, 3, 4, 5, 6, 7, 100]


async def _until(predicate: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")
