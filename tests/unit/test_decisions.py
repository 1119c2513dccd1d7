"""The pure decisions, without I/O: the ledger (fold, dedup), the back-off policy, the
dead-letter swap, and the registry that the config and the composition root read."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from bridge import registry
from bridge.config import BridgeConfig, parse
from bridge.config.models import _section_model
from bridge.kinds import SourceKind
from bridge.model import OutRecord
from bridge.pipeline.ledger import Admission, Ledger, LruCommittedIds, swap_refused
from bridge.pipeline.ports import Refused
from bridge.retry import Backoff

A, B, C = ("tmc", 1), ("tmc", 2), ("ons", 1)


def test_admission_new_then_held_then_committed() -> None:
    ledger: Ledger[str] = Ledger(LruCommittedIds(10))
    assert ledger.admit(A) is Admission.NEW
    ledger.hold(A, "entry-a")
    assert ledger.admit(A) is Admission.HELD and ledger.held(A) == "entry-a"
    assert ledger.admit(C) is Admission.NEW  # same id, other source: another message
    ledger.settle([A])
    assert ledger.admit(A) is Admission.COMMITTED and len(ledger) == 0


def test_released_messages_are_not_committed() -> None:
    ledger: Ledger[str] = Ledger(LruCommittedIds(10))
    ledger.hold(A, "a")
    ledger.hold(B, "b")
    ledger.release([A, B])
    assert ledger.admit(A) is Admission.NEW and ledger.admit(B) is Admission.NEW


def test_the_lru_forgets_the_oldest_first() -> None:
    store = LruCommittedIds(2)
    store.add_all([A, B])
    store.add_all([C])
    assert A not in store and B in store and C in store and len(store) == 2


def test_the_ledger_consults_any_committed_ids_store() -> None:
    class Durable:
        def __init__(self) -> None:
            self.keys: set[object] = {B}

        def __contains__(self, key: object) -> bool:
            return key in self.keys

        def add_all(self, keys: Any) -> None:
            self.keys.update(keys)

    store = Durable()
    ledger: Ledger[str] = Ledger(store)
    assert ledger.admit(B) is Admission.COMMITTED  # known from before a restart
    ledger.hold(A, "a")
    ledger.settle([A])
    assert A in store.keys


def test_backoff_grows_jittered_upward_and_is_capped() -> None:
    delays = Backoff(0.5, 4.0).delays(random.Random(7))
    got = [next(delays) for _ in range(8)]
    assert 0.5 <= got[0] <= 0.75
    assert all(a <= b * 1.5 + 1e-9 for a, b in zip(got, [0.5, 1, 2, 4, 4, 4, 4, 4], strict=True))
    assert all(d >= lo for d, lo in zip(got, [0.5, 1, 2, 4, 4, 4, 4, 4], strict=True))
    assert max(got) <= 4.0


def test_backoff_from_zero_still_grows_and_bad_bounds_are_refused() -> None:
    delays = Backoff(0.0, 1.0, jitter=0).delays()
    assert [next(delays) for _ in range(3)] == [0.0, 0.1, 0.2]
    with pytest.raises(ValueError, match="min_s <= max_s"):
        Backoff(2.0, 1.0)


def test_swap_refused_replaces_in_place_and_reports_stuck_records() -> None:
    records = [OutRecord("t", None, b"a", ()), OutRecord("t", None, b"b", ())]
    first = records[0]
    stuck = swap_refused(
        records, [Refused(1, "too big")], lambda r, why: OutRecord("dlq", None, why.encode(), ())
    )
    assert not stuck and records[0] is first and records[1].topic == "dlq"
    assert records[1].value == b"too big"
    assert swap_refused(records, [Refused(0, "x")], lambda r, _why: r)


def test_the_config_sections_come_from_the_registry() -> None:
    assert set(registry.SOURCES) == {"tmc", "ons", "tmc_http"}
    assert set(registry.SINKS) == {"kafka", "rocketmq"}
    cfg: BridgeConfig = parse(
        {
            "source": {"tmc": {"app_key": "1", "app_secret": "s"}},
            "sink": {"kafka": {"bootstrap_servers": "b:9092", "transactional_id": "t"}},
        },
        env={},
    )
    assert (cfg.source.type, cfg.sink.type) == ("tmc", "kafka")  # the first is the default
    assert cfg.source_kind is registry.SOURCES["tmc"]
    assert cfg.source_kind.summary(cfg.source.selected).startswith("tmc ws://mc.api.taobao.com/")


def test_a_new_adapter_is_one_kind_and_one_registry_line() -> None:
    class EchoConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        greeting: str = "hi"

    echo: SourceKind[EchoConfig] = SourceKind(
        name="echo",
        config=EchoConfig,
        build=lambda _c, _s, _m: None,  # type: ignore[arg-type,return-value]
        summary=lambda c: f"echo {c.greeting}",
        log_fields=lambda c: {},
        namespace=lambda c: "echo",
    )
    section = _section_model("source", {**registry.SOURCES, "echo": echo})
    chosen = section.model_validate({"type": "echo", "echo": {"greeting": "hello"}})
    assert chosen.get(EchoConfig) == EchoConfig(greeting="hello")
    with pytest.raises(ValueError, match=r"source\.echo is missing"):
        section.model_validate({"type": "echo"})
