"""The simulator follows docs/protocol.md §5, §9, §11: tested with a raw WebSocket
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
from bridge.sources.tmc.server import Confirm, PullRequest
from bridge.sources.tmc.session import ClientSession, Kind, LoggedIn, Push
from bridge.sources.tmc.simulator import Simulator, SimulatorConfig

KEY, SECRET = "12345678", "sim-secret"


class Client:
    def __init__(self, ws: ClientConnection, session: ClientSession) -> None:
        self.ws, self.session = ws, session

    async def push(self, wait_s: float = 5) -> Push:
        while True:
            event = self.session.receive(await asyncio.wait_for(self.ws.recv(decode=False), wait_s))
            if isinstance(event, Push):
                return event

    async def pushes(self, n: int) -> list[Push]:
        return [await self.push() for _ in range(n)]


async def login(sim: Simulator, secret: str = SECRET) -> Client:
    ws = await connect(sim.url, compression=None)
    session = ClientSession(KEY, secret, "default")
    await ws.send(session.connect(1700000000000))
    event = session.receive(await ws.recv(decode=False))
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


# -- liveness (§8) -------------------------------------------------------------------


async def test_pings_are_not_answered_by_default_but_counted(sim: Simulator) -> None:
    client = await login(sim)
    pong = await client.ws.ping(b"")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pong, 0.3)
    assert sim.stats.pings_received == 1 and sim.stats.pongs_sent == 0
    await client.ws.close()


@pytest.mark.parametrize("sim", [{"answer_pings": True}], indirect=True)
async def test_answer_pings_restores_pongs(sim: Simulator) -> None:
    client = await login(sim)
    await asyncio.wait_for(await client.ws.ping(b""), 2)
    assert sim.stats.pongs_sent == 1
    await client.ws.close()


@pytest.mark.parametrize("sim", [{"idle_close_s": 0.3}], indirect=True)
async def test_idle_socket_is_closed_with_1011(sim: Simulator) -> None:
    client = await login(sim)
    await asyncio.wait_for(client.ws.wait_closed(), 3)
    assert client.ws.close_code == 1011 and client.ws.close_reason == "reach max idle time"
    assert sim.stats.idle_closes == 1


@pytest.mark.parametrize("sim", [{"ping_interval_s": 0.1}], indirect=True)
async def test_server_pings_need_no_pong(sim: Simulator) -> None:
    ws = await connect(sim.url, compression=None)
    ws.protocol.recv_frame = lambda frame: None  # type: ignore[method-assign] # never pong
    await asyncio.sleep(0.5)
    assert ws.state.name == "OPEN"
    ws.transport.abort()


# -- faults (§11.8) ------------------------------------------------------------------


def sim_get(sim: Simulator, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/_sim/{path}") as r:
        return json.loads(r.read())


async def test_http_401_fault_refuses_the_next_upgrade(sim: Simulator) -> None:
    from websockets.exceptions import InvalidStatus

    assert await asyncio.to_thread(sim_get, sim, "fault?name=http_401") == {"applied": True}
    with pytest.raises(InvalidStatus) as info:
        await connect(sim.url)
    assert info.value.response.status_code == 401
    (await login(sim)).ws.transport.abort()  # only the next one
    stats = await asyncio.to_thread(sim_get, sim, "stats")
    assert isinstance(stats, dict) and stats["faults"] == {"http_401": 1}


async def test_wrong_ack_flag_fault(sim: Simulator) -> None:
    sim.inject("wrong_ack_flag")
    async with connect(sim.url) as ws:
        await ws.send(ClientSession(KEY, SECRET, "default").connect(1))
        frame = codec.decode(await ws.recv())  # type: ignore[arg-type]
        assert frame.token and frame.flag == 2


async def test_wrong_token_gzip_and_fragmented_pushes(sim: Simulator) -> None:
    import gzip

    client = await login(sim)
    for fault in ("wrong_token", "gzip_content", "fragmented_frame"):
        assert sim.inject(fault)
    sim.publish(3)
    frames = [codec.decode(await client.ws.recv(decode=False)) for _ in range(3)]
    assert frames[0].token != client.session.token
    gz = next(f for f in frames if f.custom["content"].fmt is codec.Fmt.BYTE_ARRAY)
    assert json.loads(gzip.decompress(gz.custom["content"].data))  # type: ignore[arg-type]
    assert all(f.custom["id"].fmt is codec.Fmt.INT64 for f in frames)  # fragments joined
    assert sim.stats.faults == {"wrong_token": 1, "gzip_content": 1, "fragmented_frame": 1}
    await client.ws.close()


async def test_out_of_order_fault_swaps_two_pushes(sim: Simulator) -> None:
    client = await login(sim)
    sim.inject("out_of_order")
    a, b, c = sim.publish(3)
    assert [p.message.message_id for p in await client.pushes(3)] == [b, a, c]
    await client.ws.close()


async def test_close_code_fault(sim: Simulator) -> None:
    client = await login(sim)
    sim.inject("close_code", params={"code": "4001", "reason": "kicked"})
    await asyncio.wait_for(client.ws.wait_closed(), 3)
    assert (client.ws.close_code, client.ws.close_reason) == (4001, "kicked")


async def test_max_connections_and_min_reconnect_interval(sim: Simulator) -> None:
    sim.inject("max_connections", params={"n": "1"})
    first = await login(sim)
    with pytest.raises(LoginError, match="too many connections"):
        await login(sim)
    await first.ws.close()
    await asyncio.sleep(0.1)
    sim.inject("max_connections", params={"n": "0"})
    sim.inject("min_reconnect_interval", params={"s": "5"})
    with pytest.raises(LoginError, match="reconnect too frequently"):
        await login(sim)
    assert sim.stats.logins_refused == 2


def test_fault_schedule_parsing() -> None:
    from bridge.sources.tmc.simulator import FaultSchedule

    f = FaultSchedule.parse("close_code:every=30s,code=4001")
    assert (f.name, f.every_s, f.params) == ("close_code", 30.0, {"code": "4001"})
    for bad in ("nope:every=1", "drop_connection", "drop_connection:every=0"):
        with pytest.raises(ValueError):
            FaultSchedule.parse(bad)


async def test_scheduled_fault_runs() -> None:
    from bridge.sources.tmc.simulator import FaultSchedule

    cfg = SimulatorConfig(apps={KEY: SECRET}, faults=[FaultSchedule.parse("idle_close:every=0.2")])
    async with Simulator(cfg) as s:
        client = await login(s)
        await asyncio.wait_for(client.ws.wait_closed(), 3)
        assert client.ws.close_code == 1011 and s.stats.faults["idle_close"] >= 1


# -- redelivery, TTL, pacing, memory ---------------------------------------------------


@pytest.mark.parametrize("sim", [{"ttl_s": 0.3}], indirect=True)
async def test_ttl_expires_in_flight_messages_too(sim: Simulator) -> None:
    sim.publish(2)
    client = await login(sim)
    await client.pushes(2)
    assert await sim.wait_settled(3)
    assert sim.stats.expired == 2 and sim.stats.expired_in_flight == 2
    assert {m["state"] for m in sim.ledger()} == {"expired"}
    await client.ws.close()


@pytest.mark.parametrize(
    "sim",
    [{"pacing": True, "push_round_max": 10, "push_round_interval_s": 0.5}],
    indirect=True,
)
async def test_pacing_pushes_a_bounded_round_per_interval(sim: Simulator) -> None:
    sim.publish(25)
    client = await login(sim)
    await client.pushes(10)
    with pytest.raises(TimeoutError):
        await client.push(wait_s=0.2)
    await client.pushes(10)  # the next round, about 0.5 s after the first
    await client.ws.close()


@pytest.mark.parametrize("sim", [{"redeliver_on_disconnect": True}], indirect=True)
async def test_redelivery_on_disconnect_is_counted(sim: Simulator) -> None:
    sim.publish(2)
    client = await login(sim)
    await client.pushes(2)
    await client.ws.close()
    await asyncio.sleep(0.1)
    assert sim.stats.redelivered_on_disconnect == 2 and sim.stats.redelivered == 2


async def test_settled_messages_are_released_but_stay_in_the_ledger(sim: Simulator) -> None:
    ids = sim.publish(3)
    client = await login(sim)
    for push in await client.pushes(3):
        await client.ws.send(client.session.confirm(push.message.message_id))
    assert await sim.wait_settled(2)
    assert not sim._messages
    ledger = sim.ledger()
    assert [m["id"] for m in ledger] == ids
    assert all(m["state"] == "confirmed" and m["pushes"] == 1 and m["conn"] == 1 for m in ledger)
    await client.ws.send(client.session.confirm(ids[0]))
    await asyncio.sleep(0.05)
    assert sim.stats.duplicate_confirms == 1
    await client.ws.close()


def test_cli_help_documents_every_option_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    out = capsys.readouterr().out
    for opt in ("--strict", "--answer-pings", "--idle-close-s", "--ttl-s", "--pacing"):
        assert opt in out
    assert out.count("(default:") >= 25
    args = build_parser().parse_args(["simulate"])
    assert args.strict is False  # lenient by default on the command line


async def test_top_gateway_consumes_and_confirms_the_same_queues(sim: Simulator) -> None:
    from urllib.parse import urlencode

    from bridge.sources.tmc.top_sign import signed_params

    ids = sim.publish(3)

    def call(method: str, **api: str) -> dict[str, object]:
        query = urlencode(signed_params(method, KEY, SECRET, api))
        with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/router/rest?{query}") as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    got = await asyncio.to_thread(call, "taobao.tmc.messages.consume", quantity="10")
    body = got["tmc_messages_consume_response"]
    assert isinstance(body, dict)
    messages = body["messages"]["tmc_message"]
    assert [m["id"] for m in messages] == ids
    ok = ",".join(str(i) for i in ids)
    await asyncio.to_thread(call, "taobao.tmc.messages.confirm", s_message_ids=ok)
    assert await sim.wait_settled(2) and sim.stats.confirmed == 3


# -- every client frame gets the session's decision (ServerSession.handle) ------------


def frame_of(raw: bytes, **changes: object) -> bytes:
    """``raw`` (a frame) re-encoded with headers or Custom entries changed (None: dropped)."""
    frame = codec.decode(raw)
    for key, value in changes.items():
        if key in {"flag", "token", "type"}:
            setattr(frame, key, value)
        elif value is None:
            frame.custom.pop(key, None)
        else:
            frame.custom[key] = value  # type: ignore[assignment]
    return codec.encode(frame)


async def failed_connectack(ws: ClientConnection, data: bytes) -> codec.Frame:
    await ws.send(data)
    frame = codec.decode(await asyncio.wait_for(ws.recv(), 2))  # type: ignore[arg-type]
    assert frame.type is codec.MessageType.CONNECTACK and frame.token is None
    return frame


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"sign": None}, "missing sign"),
        ({"sign": codec.string("0" * 32)}, "invalid sign"),
        ({"app_key": codec.string("87654321")}, "unknown app_key"),
    ],
)
async def test_bad_connect_gets_failed_connectack_with_code_and_phrase(
    sim: Simulator, change: dict[str, object], phrase: str
) -> None:
    async with connect(sim.url) as ws:
        good = ClientSession(KEY, SECRET, "default").connect(1700000000000)
        frame = await failed_connectack(ws, frame_of(good, flag=9, **change))
        assert (frame.status_code, frame.status_phrase, frame.flag) == (1, phrase, 9)
        # The socket stays open (top-link's behaviour): a good CONNECT still logs in.
        await ws.send(good)
        assert codec.decode(await ws.recv()).token  # type: ignore[arg-type]
    assert sim.stats.logins_failed == 1 and sim.stats.logins_ok == 1


@pytest.mark.parametrize(
    "sim",
    [{"login_error_code": 7, "login_error_phrase": "bad sign", "close_on_login_error": True}],
    indirect=True,
)
async def test_login_error_config_and_close(sim: Simulator) -> None:
    async with connect(sim.url) as ws:
        frame = await failed_connectack(ws, ClientSession(KEY, "wrong", "d").connect(1))
        assert (frame.status_code, frame.status_phrase) == (7, "bad sign")
        await asyncio.wait_for(ws.wait_closed(), 2)


async def test_send_before_login_and_second_connect_get_failed_connectacks(
    sim: Simulator,
) -> None:
    async with connect(sim.url) as ws:
        session = ClientSession(KEY, SECRET, "default")
        pull = codec.encode(
            codec.Frame(
                codec.MessageType.SEND, flag=5, custom={"__kind": codec.byte(Kind.PULL_REQUEST)}
            )
        )
        frame = await failed_connectack(ws, pull)
        assert frame.status_code == 1 and frame.flag == 5
        assert frame.status_phrase == "not connected: send CONNECT first"
        await ws.send(session.connect(1700000000000))
        assert isinstance(session.receive(await ws.recv()), LoggedIn)  # type: ignore[arg-type]
        again = ClientSession(KEY, SECRET, "default").connect(1700000000000)
        frame = await failed_connectack(ws, again)
        assert frame.status_phrase == "only allow sinle endpoint connected on a channel"
        # The first login stays: pushes still come.
        [msg_id] = sim.publish(1)
        await ws.send(session.pull())
        push = session.receive(await asyncio.wait_for(ws.recv(), 2))  # type: ignore[arg-type]
        assert isinstance(push, Push) and push.message.message_id == msg_id
    stats = await asyncio.to_thread(sim_get, sim, "stats")
    assert isinstance(stats, dict)
    assert stats["protocol_errors_by_reason"] == {"send_before_login": 1, "second_connect": 1}
    assert stats["protocol_errors"] == 2 and stats["logins_ok"] == 1


async def test_flagged_publish_gets_sendack_and_is_queued_to_the_publishers_group(
    sim: Simulator,
) -> None:
    client = await login(sim)
    token = client.session.token
    publish = codec.encode(
        codec.Frame(
            codec.MessageType.SEND,
            flag=42,
            token=token,
            custom={
                "__kind": codec.byte(Kind.DATA),
                "topic": codec.string("taobao_trade_TradeCreate"),
                "content": codec.string('{"tid": 1}'),
            },
        )
    )
    await client.ws.send(publish)
    ack = codec.decode(await asyncio.wait_for(client.ws.recv(), 2))  # type: ignore[arg-type]
    assert ack.type is codec.MessageType.SENDACK
    assert (ack.flag, ack.token, ack.status_code) == (42, token, 0)
    push = await client.push()  # queued to the publisher's own group, pushed back to it
    assert push.message.topic == "taobao_trade_TradeCreate"
    assert sim.stats.published == 1
    await client.ws.close()


def int32_confirm(client: Client, msg_id: int) -> bytes:
    return frame_of(client.session.confirm(msg_id), id=codec.Value(codec.Fmt.INT32, msg_id))


@pytest.mark.parametrize("strict", [True, False])
async def test_int32_id_confirm_strict_refuses_lenient_tolerates(strict: bool) -> None:
    async with Simulator(SimulatorConfig(apps={KEY: SECRET}, strict=strict)) as sim:
        sim._next_id = sim.id_base = 1000  # ids that fit an Int32 (tmcpy writes them so)
        [msg_id] = sim.publish(1)
        client = await login(sim)
        assert (await client.push()).message.message_id == msg_id
        await client.ws.send(int32_confirm(client, msg_id))
        if strict:
            await asyncio.sleep(0.2)
            assert sim.stats.confirmed == 0
            assert sim.stats.protocol_errors == 1
            assert sim.stats.protocol_errors_by_reason == {"id_not_int64": 1}
            assert sim.stats.tolerated_by_reason == {}
        else:
            assert await sim.wait_settled(2) and sim.stats.confirmed == 1
            assert sim.stats.protocol_errors == 0
            assert sim.stats.tolerated_by_reason == {"id_not_int64": 1}
        stats = await asyncio.to_thread(sim_get, sim, "stats")
        assert isinstance(stats, dict)
        assert stats["tolerated_by_reason"] == sim.stats.tolerated_by_reason
        await client.ws.close()


def test_a_scheduled_fault_names_its_group_and_its_parameters_are_checked_at_start() -> None:
    from bridge.sources.tmc.simulator import FaultSchedule

    schedule = FaultSchedule.parse("close_code:every=30s,code=4001,group=paying")
    assert (schedule.group, schedule.params) == ("paying", {"code": "4001"})
    assert FaultSchedule.parse("drop_connection:every=5").group == "default"
    with pytest.raises(ValueError, match="code='abc' is not an integer"):
        FaultSchedule.parse("close_code:every=60s,code=abc")
    with pytest.raises(ValueError, match="unknown parameter"):
        FaultSchedule.parse("drop_connection:every=60s,cod=1")
    with pytest.raises(ValueError, match="number of seconds"):
        FaultSchedule.parse("drop_connection:every=soon")


async def test_pushes_written_together_are_canonical_frames_and_batched_confirms_count(
    sim: Simulator,
) -> None:
    client = await login(sim)
    ids = sim.publish(300)
    raws = [await asyncio.wait_for(client.ws.recv(), 5) for _ in range(300)]
    frames = [codec.decode(raw) for raw in raws]  # type: ignore[arg-type]
    assert [f.get("id") for f in frames] == ids
    for raw, frame in zip(raws, frames, strict=True):
        assert codec.encode(frame) == raw  # the codec's own layout, byte for byte
        assert frame.token == client.session.token and "retried" not in frame.custom
        assert list(frame.custom)[-1] == "outtime"
    # Every confirm in one socket write: many WebSocket frames in one read.
    protocol = client.ws.protocol
    for msg_id in ids:
        protocol.send_binary(client.session.confirm(msg_id))
    client.ws.transport.write(b"".join(protocol.data_to_send()))
    assert await sim.wait_settled(2)
    assert sim.stats.confirmed == 300 and sim.stats.duplicate_confirms == 0
    assert sim.stats.protocol_errors == 0
    await client.ws.close()


async def test_frames_after_login_are_acted_on_in_their_order(sim: Simulator) -> None:
    """Confirms are taken as they are parsed, except behind a message that goes through
    recv() (text, fragmented): then in order behind it."""
    client = await login(sim)
    a, b, c = sim.publish(3)
    await client.pushes(3)
    seen: list[object] = []
    original = sim._on_request

    def spy(conn: object, event: object) -> None:
        seen.append(event)
        original(conn, event)  # type: ignore[arg-type]

    sim._on_request = spy  # type: ignore[method-assign]
    confirm_b = client.session.confirm(b)
    protocol = client.ws.protocol
    protocol.send_binary(client.session.confirm(a))
    protocol.send_text(b"not a TMC frame")
    protocol.send_binary(confirm_b[:5], fin=False)
    protocol.send_continuation(confirm_b[5:], fin=True)
    protocol.send_binary(client.session.confirm(c))
    protocol.send_binary(client.session.pull())
    client.ws.transport.write(b"".join(protocol.data_to_send()))
    assert await sim.wait_settled(2)
    await asyncio.sleep(0.05)
    assert seen == [Confirm(a), Confirm(b), Confirm(c), PullRequest()]
    assert sim.stats.protocol_errors_by_reason == {"text_frame": 1}
    await client.ws.close()


@pytest.mark.parametrize("sim", [{"window": 4}], indirect=True)
async def test_two_connections_share_the_queue_round_robin_within_their_windows(
    sim: Simulator,
) -> None:
    clients = [await login(sim), await login(sim)]
    ids = sim.publish(12)
    first = [[p.message.message_id for p in await c.pushes(4)] for c in clients]
    assert sorted(first[0] + first[1]) == ids[:8]
    assert {ids[0], ids[1]} & set(first[0]) and {ids[0], ids[1]} & set(first[1])
    for client, got in zip(clients, first, strict=True):
        for msg_id in got:
            await client.ws.send(client.session.confirm(msg_id))
    rest = [[p.message.message_id for p in await c.pushes(2)] for c in clients]
    assert sorted(rest[0] + rest[1]) == ids[8:]
    for client, got in zip(clients, rest, strict=True):
        for msg_id in got:
            await client.ws.send(client.session.confirm(msg_id))
    assert await sim.wait_settled(2) and sim.stats.pushes == 12
    for client in clients:
        await client.ws.close()
