"""Several TMC groups: config, per-group routes, readiness per group, the dedup
namespace, and the pure step-back decision."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import config as cfgmod
from bridge.app import step_back
from bridge.config_fields import group_name_problem
from bridge.dedup import marker
from bridge.model import SourceMessage, stream_key
from bridge.observability.metrics import Metrics
from bridge.pipeline.routing import Router


def _doc(tmc: dict[str, Any], routing: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "source": {
            "type": "tmc",
            "tmc": {"url": "ws://127.0.0.1:1/", "app_key": "12345678", "app_secret": "s", **tmc},
        },
        "sink": {
            "type": "kafka",
            "kafka": {"bootstrap_servers": "127.0.0.1:1", "transactional_id": "t"},
        },
        "routing": routing or {"topics": {"*": "tmc.all"}},
    }


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("default", True),
        ("vip", True),
        ("v" * 32, True),
        ("v" * 33, False),
        ("default2", False),
        ("defaults", False),
        ("", False),
        (" vip", False),
        ("my_default", True),
    ],
)
def test_group_name_rules(name: str, ok: bool) -> None:
    assert (group_name_problem(name) is None) is ok


@given(st.text(max_size=40))
def test_a_group_name_problem_is_a_sentence_or_none(name: str) -> None:
    problem = group_name_problem(name)
    valid = (
        bool(name.strip())
        and name == name.strip()
        and len(name) <= 32
        and (name == "default" or not name.startswith("default"))
    )
    assert (problem is None) is valid


def test_groups_list_their_connections_and_default_to_the_common_count() -> None:
    cfg = cfgmod.parse(
        _doc({"connections": 2, "groups": [{"name": "default"}, {"name": "vip", "connections": 3}]})
    )
    assert cfg.source.tmc.group_connections() == [("default", 2), ("vip", 3)]
    assert "groups=defaultx2,vipx3" in cfg.source_kind.summary(cfg.source.selected)


@pytest.mark.parametrize("tmc", [{}, {"group": "vip"}, {"groups": [{"name": "a"}, {"name": "b"}]}])
def test_each_group_is_a_stream_with_the_marker_key_one_group_always_had(
    tmc: dict[str, Any],
) -> None:
    """The committed ids of a group are kept under tmc/<app_key>/<group>|tmc, whether the
    bridge reads one group or several (and whatever the source, WebSocket or HTTP): a
    store written by a one-group bridge stays valid when groups are added."""
    cfg = cfgmod.parse(_doc(tmc))
    namespace = cfg.source_kind.namespace(cfg.source.selected)
    assert namespace == "tmc/12345678"
    for group in cfg.source.tmc.group_names():
        key = stream_key(SourceMessage("tmc", 5, "t", b"", group=group))
        assert key == (f"tmc@{group}", 5)
        found = marker.scope(namespace, key[0])
        assert found == f"tmc/12345678/{group}|tmc"
        assert marker.source_of(namespace, found) == key[0]


@given(
    st.text(min_size=1, max_size=40),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/", min_size=1, max_size=20),
    st.sampled_from(["tmc", "ons"]),
)
def test_a_marker_scope_reads_back_as_its_stream(group: str, namespace: str, source: str) -> None:
    for stream in (source, f"{source}@{group}"):
        assert marker.source_of(namespace, marker.scope(namespace, stream)) == stream
    # Another namespace's keys are not ours (a longer app key, another group's bridge).
    assert marker.source_of(namespace, marker.scope(namespace + "9", f"{source}@{group}")) is None


def _msg(topic: str, group: str | None) -> SourceMessage:
    return SourceMessage("tmc", 1, topic, b'{"tid": 7, "num_iid": 9}', group=group)


def test_a_group_uses_its_own_routes_and_keeps_the_common_ones_it_does_not_set() -> None:
    cfg = cfgmod.parse(
        _doc(
            {"groups": [{"name": "default"}, {"name": "vip"}]},
            {
                "topics": {"taobao_trade_*": "trade", "*": "other"},
                "keys": {"taobao_trade_*": ["tid"]},
                "groups": {"vip": {"topics": {"*": "vip"}, "keys": {"*": ["num_iid"]}}},
            },
        )
    )
    router = Router(cfg.routing)
    common = router.route(_msg("taobao_trade_TradeCreate", "default"))
    assert (common.topic, common.key) == ("trade", b"7")
    assert (b"default") in dict(common.headers).values()
    vip = router.route(_msg("taobao_trade_TradeCreate", "vip"))
    assert (vip.topic, vip.key) == ("vip", b"9")
    assert dict(vip.headers)["tmc.group"] == b"vip"
    # Not from a TMC group (e.g. ONS): the common routes, no group header.
    plain = router.route(_msg("taobao_item_ItemAdd", None))
    assert plain.topic == "other"
    assert "tmc.group" not in dict(plain.headers)
    # A group with only topics of its own keeps the common keys.
    only_topics = cfg.routing.model_copy(
        update={"groups": {"vip": cfg.routing.groups["vip"].model_copy(update={"keys": None})}}
    )
    assert only_topics.for_group("vip").keys == cfg.routing.keys


async def test_readiness_names_each_group_without_a_login() -> None:
    """Not started: every group is named with its reason; one group has the old wording."""
    from bridge.sources.tmc.connection import TmcSource

    async def submit(_delivery: object) -> None:
        return None

    several = cfgmod.parse(_doc({"groups": [{"name": "default"}, {"name": "vip"}]}))
    source = TmcSource(several.source.tmc, submit, metrics=Metrics())
    assert source.problem() == "tmc group default not logged in; tmc group vip not logged in"
    source._connections[1].online = True
    assert source.problem() == "tmc group default not logged in"
    one = cfgmod.parse(_doc({}))
    assert TmcSource(one.source.tmc, submit, metrics=Metrics()).problem() == "tmc not logged in"


@pytest.mark.parametrize(
    ("paused", "since", "now", "after", "want"),
    [
        (False, None, 100.0, 60.0, None),  # sink fine
        (False, 50.0, 100.0, 60.0, None),  # down 50 s < 60 s
        (False, 40.0, 100.0, 60.0, True),  # down 60 s: step back
        (False, 0.0, 1000.0, 0.0, None),  # 0 = never
        (True, 0.0, 1000.0, 60.0, None),  # still down: stay out
        (True, None, 1000.0, 60.0, False),  # answers again: back in
        (True, None, 1000.0, 0.0, False),  # turned off while out: back in
    ],
)
def test_step_back_decision(
    paused: bool, since: float | None, now: float, after: float, want: bool | None
) -> None:
    assert step_back(paused, since, now, after) is want
