"""The simulator follows shared/tmc-protocol.md §5, §9, §11: tested with a raw WebSocket
client speaking the sans-I/O ClientSession (no bridge, no broker)."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bridge.errors import LoginError
from bridge.retry import Backoff
from bridge.sources.tmc import codec
from bridge.sources.tmc.session import ClientSession, LoggedIn, Push
from bridge.sources.tmc.simulator import Simulator, SimulatorConfig

KEY, SECRET = "12345678", "sim-secret"


class Client:
    def __init__(self, ws: ClientConnection, session: ClientSession) -> None:
        self.ws, self.session = ws, session

    async def push(self, wait_s: float = 5) -> Push:
        while True:
            event = self.session.receive(await asyncio.wait_for(self.ws.recv(), wait_s))
            if isinstance(event, Push):
                return event

    async def pushes(self, n: int) -> list[Push]:
        return [await self.push() for _ in range(n)]


async def login(sim: Simulator, secret: str = SECRET) -> Client:
    ws = await connect(sim.url, compression=None)
    session = ClientSession(KEY, secret, "default")
    await ws.send(session.connect(1700000000000))
    event = session.receive(await ws.recv())
    assert isinstance(event, LoggedIn)
    await ws.send(session.pull())
    return Client(ws, session)


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    overrides = getattr(request, "param", {})
    async with Simulator(SimulatorConfig(apps={KEY: SECRET}, **overrides)) as s:
        yield s


async def test_wrong_sign_gets_failed_connectack_without_token(sim: Simulator) -> None:
    async with connect(sim.url) as ws:
        session = ClientSession(KEY, "wrong", "default")
        await ws.send(session.connect(1))
        raw = await ws.recv()
        frame = codec.decode(raw)  # type: ignore[arg-type]
        assert frame.token is None and frame.status_code == 1 and frame.flag == 1
        with pytest.raises(LoginError, match="invalid sign"):
            session.receive(raw)  # type: ignore[arg-type]
    assert sim.stats.logins_failed == 1 and sim.stats.logins_ok == 0


async def test_flag_echo_token_on_every_push_and_canonical_formats(sim: Simulator) -> None:
    sim.publish(5)
    client = await login(sim)
    for push in await client.pushes(5):
        assert push.message.message_id > 2**53
    # Decode one more raw push to look at the wire formats.
    sim.publish(1)
    frame = codec.decode(await client.ws.recv())  # type: ignore[arg-type]
    assert frame.token == client.session.token
    assert frame.custom["id"].fmt is codec.Fmt.INT64
    assert frame.custom["time"].fmt is codec.Fmt.DATE
    assert frame.custom["__kind"] == codec.byte(3)
    await client.ws.close()


@pytest.mark.parametrize("sim", [{"confirm_timeout_s": 0.3}], indirect=True)
async def test_unconfirmed_message_is_redelivered_with_retried(sim: Simulator) -> None:
    [msg_id] = sim.publish(1)
    client = await login(sim)
    first = await client.push()
    assert first.message.message_id == msg_id and first.retried is None
    again = await client.push(wait_s=3)
    assert again.message.message_id == msg_id and again.retried == 1
    await client.ws.send(client.session.confirm(msg_id))
    assert await sim.wait_settled(2)
    assert sim.stats.redelivered == 1 and sim.stats.confirmed == 1
    await client.ws.send(client.session.confirm(msg_id))
    await client.ws.send(client.session.confirm(42))
    await asyncio.sleep(0.1)
    assert (sim.stats.duplicate_confirms, sim.stats.unknown_confirms) == (1, 1)
    await client.ws.close()


@pytest.mark.parametrize("sim", [{"failed_delay_s": 0.3}], indirect=True)
async def test_failed_is_redelivered_after_the_delay_and_confirm_after_failed_wins(
    sim: Simulator,
) -> None:
    a, b = sim.publish(2)
    client = await login(sim)
    await client.pushes(2)
    await client.ws.send(client.session.fail(a, "db timeout"))
    await client.ws.send(client.session.fail(b, None))
    await client.ws.send(client.session.confirm(b))  # manual-confirm style: confirm wins
    again = await client.push(wait_s=3)
    assert again.message.message_id == a
    await client.ws.send(client.session.confirm(a))
    assert await sim.wait_settled(2)
    assert sim.stats.failed_received == 2 and sim.stats.confirmed == 2
    await client.ws.close()


async def test_several_connections_get_each_message_once(sim: Simulator) -> None:
    clients = [await login(sim) for _ in range(3)]
    ids = sim.publish(30)
    got: list[int] = []
    for c in clients:
        for push in await c.pushes(10):  # round-robin: 10 each
            got.append(push.message.message_id)
            await c.ws.send(c.session.confirm(push.message.message_id))
    assert sorted(got) == ids
    assert await sim.wait_settled(2)
    assert sim.stats.pushes == 30
    for c in clients:
        await c.ws.close()


@pytest.mark.parametrize("sim", [{"window": 5}], indirect=True)
async def test_window_limits_unconfirmed_pushes_per_connection(sim: Simulator) -> None:
    sim.publish(8)
    client = await login(sim)
    first = await client.pushes(5)
    with pytest.raises(TimeoutError):
        await client.push(wait_s=0.3)
    await client.ws.send(client.session.confirm(first[0].message.message_id))
    assert (await client.push()).message.message_id == first[-1].message.message_id + 1
    await client.ws.close()


@pytest.mark.parametrize(
    "sim", [{"confirm_timeout_s": 30, "redeliver_on_disconnect": True}], indirect=True
)
async def test_dropped_connection_messages_go_to_the_next_login(sim: Simulator) -> None:
    ids = sim.publish(3)
    client = await login(sim)
    await client.pushes(3)
    assert sim.inject("drop_connection")
    other = await login(sim)
    assert [p.message.message_id for p in await other.pushes(3)] == ids
    await other.ws.close()


async def test_http_control_and_stats(sim: Simulator) -> None:
    def get(path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/_sim/{path}") as r:
            return json.loads(r.read())

    published = await asyncio.to_thread(get, "publish?count=4")
    assert published == {"published": 4, "first_id": sim.id_base}
    stats = await asyncio.to_thread(get, "stats")
    assert isinstance(stats, dict) and stats["outstanding"] == 4 and stats["published"] == 4
    ledger = await asyncio.to_thread(get, "ledger")
    assert isinstance(ledger, list) and {m["state"] for m in ledger} == {"queued"}


def test_generated_orders_follow_their_life_cycle_with_big_ids() -> None:
    from bridge.sources.tmc.generator import OrderGenerator

    events = OrderGenerator(seed=3).events(5000)
    steps = ["TradeCreate", "TradeBuyerPay", "TradeSellerShip", "TradeSuccess"]
    seen: dict[int, list[str]] = {}
    for ev in events:
        body = json.loads(ev.content)
        if ev.topic.startswith("taobao_trade_"):
            assert body["tid"] > 2**53 and body["tid"] == ev.key
            seen.setdefault(ev.key, []).append(ev.topic.removeprefix("taobao_trade_"))
    for topics in seen.values():
        order = [steps.index(t) for t in dict.fromkeys(topics) if t in steps]
        assert order == sorted(order)
    assert {e.topic.split("_")[1] for e in events} == {"trade", "refund", "item"}


def test_backoff_first_delay_not_below_minimum_and_capped() -> None:
    delays = Backoff(10, 120).delays(random.Random(1))
    first = [next(delays) for _ in range(10)]
    assert 10 <= first[0] <= 15
    assert all(d <= 120 for d in first) and first[-1] >= 60
