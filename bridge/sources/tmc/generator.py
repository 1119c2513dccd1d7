"""Realistic TMC order traffic for the simulator (docs/protocol.md §13). Pure.

Orders go through life cycles, interleaved with each other the way a busy shop sees them:

* TradeCreate -> TradeBuyerPay -> TradeSellerShip -> TradeSuccess (most orders),
* TradeCreate -> TradeClose (unpaid),
* ... -> RefundCreated -> RefundSuccess after payment (some orders), keyed by ``tid``,
* item events (ItemStockChanged, ItemUpdate) keyed by ``num_iid``.

Multi-item orders emit one trade message per sub-order (``oid``), all with the same
``tid``, as the platform does (§13.1). Every id (tid, oid, refund_id, message ids) is
above 2^53, so a float anywhere in the path would corrupt it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

TAOBAO_PUBLISHER = "12497914"
_MONEY = ("9.90", "19.90", "59.90", "128.00", "299.00", "1799.00")
_TYPES = ("fixed", "fixed", "fixed", "guarantee_trade", "step")


@dataclass(frozen=True, slots=True)
class Event:
    """One business event, ready to be published by the simulator."""

    topic: str
    content: str
    user_id: int
    nick: str
    data_id: int
    #: The routing key a bridge should derive (tid, or num_iid for items), for checks.
    key: int


@dataclass(frozen=True, slots=True)
class _Shop:
    user_id: int
    nick: str


#: One encoder for every document: ``json.dumps`` with options builds a new one per call.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class OrderGenerator:
    """Deterministic for a given seed."""

    def __init__(self, seed: int = 1, *, shops: int = 5, concurrent_orders: int = 200) -> None:
        self._rng = random.Random(seed)
        self._shops = [
            _Shop(2_200_000_000 + 17 * i + self._rng.randrange(10), f"demo_shop_{i}")
            for i in range(shops)
        ]
        self._concurrent = concurrent_orders
        # 19-digit ids like present-day tids (> 2^53 = 9007199254740992).
        self._next_tid = 3_658_921_147_856_000_000 + self._rng.randrange(10**6) * 1000
        self._next_refund = 181_000_000_000_000_000 + self._rng.randrange(10**6) * 100
        self._items = [600_000_000_000 + self._rng.randrange(10**9) for _ in range(50)]

    def _order(self) -> Iterator[Event]:
        rng = self._rng
        shop = rng.choice(self._shops)
        tid = self._next_tid
        self._next_tid += rng.randrange(7, 9_999)
        subs = 1 if rng.random() < 0.8 else rng.randrange(2, 4)
        oids = [tid] if subs == 1 else [tid + 1 + i for i in range(subs)]
        buyer = f"{rng.choice('tcxyzm')}**"
        uid = f"AAF{rng.randrange(16**12):012x}"
        base = {
            "buyer_nick": buyer,
            "buyer_open_uid": uid,
            "seller_nick": shop.nick,
            "type": rng.choice(_TYPES),
        }
        payment = rng.choice(_MONEY)
        # The JSON of {**base, "oid": oid, "payment": payment, "tid": tid, **extra}, put
        # together from pieces encoded once per order (or per topic): the same text, for a
        # fraction of a json encoding per message.
        # (An int's JSON is its str.)
        head = f'{_dumps(base)[:-1]},"oid":'
        middle = f',"payment":{_dumps(payment)},"tid":{tid}'

        def trade(topic: str, **extra: object) -> Iterator[Event]:
            tail = f",{_dumps(extra)[1:]}" if extra else "}"
            name = f"taobao_trade_{topic}"
            for oid in oids:
                yield Event(name, f"{head}{oid}{middle}{tail}", shop.user_id, shop.nick, tid, tid)

        yield from trade("TradeCreate", status="WAIT_BUYER_PAY")
        if rng.random() < 0.1:
            yield from trade("TradeClose", status="TRADE_CLOSED_BY_TAOBAO")
            return
        yield from trade("TradeBuyerPay")
        if rng.random() < 0.15:
            refund_id = self._next_refund
            self._next_refund += rng.randrange(3, 999)
            doc = {
                **base,
                "refund_id": refund_id,
                "tid": tid,
                "oid": oids[0],
                "refund_fee": payment,
                "refund_phase": "onsale",
                "bill_type": "refund_bill",
                "modified": "2026-11-11 00:00:00",
            }
            yield Event(
                "taobao_refund_RefundCreated", _dumps(doc), shop.user_id, shop.nick, refund_id, tid
            )
            yield Event(
                "taobao_refund_RefundSuccess", _dumps(doc), shop.user_id, shop.nick, refund_id, tid
            )
            yield from trade("TradeClose", status="TRADE_CLOSED")
            return
        yield from trade("TradeSellerShip", status="WAIT_BUYER_CONFIRM_GOODS")
        yield from trade("TradeSuccess", status="TRADE_FINISHED")

    def _item(self) -> Event:
        rng = self._rng
        shop = rng.choice(self._shops)
        num_iid = rng.choice(self._items)
        if rng.random() < 0.7:
            topic = "taobao_item_ItemStockChanged"
            doc: dict[str, object] = {
                "nick": shop.nick,
                "increment": -1,
                "num": rng.randrange(1000),
                "changed_fields": "num",
                "num_iid": num_iid,
            }
        else:
            topic = "taobao_item_ItemUpdate"
            doc = {"nick": shop.nick, "changed_fields": "price,desc", "num_iid": num_iid}
        return Event(topic, _dumps(doc), shop.user_id, shop.nick, num_iid, num_iid)

    def events(self, count: int) -> list[Event]:
        """``count`` events: life cycles of many concurrent orders, interleaved."""
        out: list[Event] = []
        active: list[Iterator[Event]] = []
        rng = self._rng
        while len(out) < count:
            while len(active) < self._concurrent:
                active.append(self._order())
            if rng.random() < 0.08:
                out.append(self._item())
                continue
            i = rng.randrange(len(active))
            event = next(active[i], None)
            if event is None:
                active[i] = active[-1]
                active.pop()
            else:
                out.append(event)
        return out
