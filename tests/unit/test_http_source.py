"""The TMC HTTP API source against a fake gateway (httpx.MockTransport): response
parsing, the TOP client's errors, confirm batching, idle back-off, one consume at a time."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bridge.model import Delivery
from bridge.observability.metrics import Metrics
from bridge.sources.tmc.top_client import TopCallError, TopClient, TopTransportError
from bridge.sources.tmc.top_sign import format_timestamp, verify
from bridge.sources.tmc_http.config import TmcHttpSourceConfig
from bridge.sources.tmc_http.parse import INT64_MAX, Skipped, parse_consume
from bridge.sources.tmc_http.source import TmcHttpSource

APP_KEY, SECRET = "12345678", "fake-gateway-secret"
URL = "http://gateway.test/router/rest"


# -- parsing -------------------------------------------------------------------------------

ids = st.one_of(
    st.integers(min_value=0, max_value=INT64_MAX),
    st.integers(min_value=2**53 - 5, max_value=2**53 + 5),
    st.integers(min_value=2**63 - 1000, max_value=INT64_MAX),
)
bad_ids = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=INT64_MAX).map(float),
    st.integers(min_value=0, max_value=INT64_MAX).map(str),
    st.booleans(),
    st.integers(min_value=INT64_MAX + 1),
    st.integers(max_value=-1),
    st.none(),
)


def entry(msg_id: object, **fields: Any) -> dict[str, Any]:
    out = {
        "id": msg_id,
        "topic": "taobao_trade_TradeCreate",
        "content": '{"tid":1,"nick":"店"}',
        "pub_app_key": "12497914",
        "pub_time": "2023-11-15 06:13:20",
        "user_id": 2200000001,
        "user_nick": "demo_shop",
    }
    out.update(fields)
    return out


def through_json(result: dict[str, Any]) -> dict[str, Any]:
    """As the client gets it: rendered by a gateway, parsed by json.loads."""
    parsed: dict[str, Any] = json.loads(json.dumps(result))
    return parsed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ids.map(lambda i: ("good", i)), bad_ids.map(lambda b: ("bad", b)))))
def test_parsing_keeps_exact_int_ids_and_skips_every_other_id(
    items: list[tuple[str, Any]],
) -> None:
    result = through_json({"messages": {"tmc_message": [entry(v) for _, v in items]}})
    messages, skipped = parse_consume(result)
    assert [m.message_id for m in messages] == [v for kind, v in items if kind == "good"]
    assert len(skipped) == sum(1 for kind, _ in items if kind == "bad")
    for message in messages:
        assert type(message.message_id) is int
        assert message.source == "tmc"
        assert message.malformed is None
        assert message.content == '{"tid":1,"nick":"店"}'.encode()
        assert message.publish_time_ms == 1700000000000
        assert (message.publisher, message.user_id, message.nick) == (
            "12497914",
            2200000001,
            "demo_shop",
        )


def test_ids_above_2_53_stay_exact_and_a_float_is_refused() -> None:
    big = 7104300007405429232
    text = f'{{"messages":{{"tmc_message":[{{"id":{big},"topic":"t","content":"{{}}"}},'
    text += '{"id":7104300007405429232.0,"topic":"t","content":"{}"}]}}'
    messages, skipped = parse_consume(json.loads(text))
    assert [m.message_id for m in messages] == [big]
    assert len(skipped) == 1
    assert "float" in skipped[0].reason


@settings(max_examples=200, deadline=None)
@given(
    ids,
    st.sampled_from(
        [
            ("pub_time", "2023-11-15T06:13:20"),
            ("pub_time", 1700000000),
            ("content", None),
            ("content", 12),
            ("content", "\ud800"),
            ("topic", ""),
            ("topic", ["x"]),
            ("user_id", 1.5),
            ("user_id", "22"),
            ("user_nick", {"a": 1}),
        ]
    ),
)
def test_a_good_id_with_a_bad_field_is_handed_on_malformed(
    msg_id: int, bad: tuple[str, object]
) -> None:
    key, value = bad
    messages, skipped = parse_consume(
        {"messages": {"tmc_message": [entry(msg_id, **{key: value})]}}
    )
    assert not skipped
    assert len(messages) == 1
    assert messages[0].message_id == msg_id
    assert messages[0].malformed


@pytest.mark.parametrize(
    "result",
    [{}, {"request_id": "x"}, {"messages": {}}, {"messages": {"tmc_message": []}}],
)
def test_an_empty_answer_has_no_messages(result: dict[str, Any]) -> None:
    assert parse_consume(result) == ([], [])


def test_an_answer_of_the_wrong_shape_is_one_skip() -> None:
    messages, skipped = parse_consume({"messages": [1, 2]})
    assert messages == []
    assert len(skipped) == 1
    assert isinstance(skipped[0], Skipped)


# -- a fake gateway ------------------------------------------------------------------------


class Gateway:
    """Checks signatures like the real gateway, hands out queued messages, records calls."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.queue: list[dict[str, Any]] = []
        self.consume_times: list[float] = []
        self.confirmed: list[list[int]] = []
        self.running = 0
        self.max_running = 0
        self.delay_s = 0.0
        self.confirm_failures = 0

    def publish(self, count: int, first: int = 2**60) -> list[int]:
        new = [entry(first + i, pub_time=format_timestamp()) for i in range(count)]
        self.queue += new
        return [e["id"] for e in new]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        params = dict(parse_qsl(request.url.query.decode(), keep_blank_values=True))
        assert request.method == "GET"
        if not verify(params, self.secret, "hmac-sha256", params.get("sign", "")):
            return self.reply({"error_response": {"code": 25, "msg": "Invalid signature"}})
        method = params["method"]
        if method == "taobao.tmc.messages.consume":
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.consume_times.append(time.monotonic())
            try:
                await asyncio.sleep(self.delay_s)
                quantity = int(params["quantity"])
                taken, self.queue = self.queue[:quantity], self.queue[quantity:]
            finally:
                self.running -= 1
            body: dict[str, Any] = {"request_id": "r"}
            if taken:
                body["messages"] = {"tmc_message": taken}
            return self.reply({"tmc_messages_consume_response": body})
        if method == "taobao.tmc.messages.confirm":
            if self.confirm_failures:
                self.confirm_failures -= 1
                return httpx.Response(502, text="bad gateway")
            batch = [int(i) for i in params["s_message_ids"].split(",")]
            assert len(batch) <= 200
            assert params["group_name"] == "default"
            self.confirmed.append(batch)
            return self.reply({"tmc_messages_confirm_response": {"is_success": True}})
        return self.reply({"error_response": {"code": 22, "msg": "Invalid method"}})

    @staticmethod
    def reply(body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, content=json.dumps(body).encode())

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


class Collect:
    """A pipeline that settles what it gets through ``settle`` (default: confirm)."""

    def __init__(self, settle: Callable[[Delivery], None] | None = None) -> None:
        self.got: list[Delivery] = []
        self.settle = settle or (lambda d: d.acks[0].confirm())

    async def __call__(self, delivery: Delivery) -> None:
        self.got.append(delivery)
        self.settle(delivery)


def config(**overrides: Any) -> TmcHttpSourceConfig:
    values: dict[str, Any] = {
        "url": URL,
        "app_key": APP_KEY,
        "app_secret": SECRET,
        "error_backoff_min_s": 0.1,
        "error_backoff_max_s": 0.2,
        "confirm_linger_ms": 10,
    }
    values.update(overrides)
    return TmcHttpSourceConfig.model_validate(values)


async def wait_for(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- the TOP client ------------------------------------------------------------------------


async def test_a_wrong_secret_says_what_to_check_and_shows_no_secret() -> None:
    gateway = Gateway(secret="the-real-one")
    top = TopClient(URL, APP_KEY, SECRET, client=gateway.client())
    with pytest.raises(TopCallError) as caught:
        await top.call("taobao.tmc.messages.consume", {"quantity": "10"})
    text = str(caught.value)
    assert "taobao.tmc.messages.consume" in text
    assert "code 25" in text
    assert "app_secret" in text
    assert "\n" not in text
    assert SECRET not in text
    assert "sign=" not in text
    assert caught.value.code == 25


@pytest.mark.parametrize(
    ("envelope", "hint"),
    [
        ({"code": 29, "msg": "Invalid app key"}, "app_key"),
        (
            {"code": 31, "msg": "Invalid timestamp", "sub_code": "isv.invalid-timestamp"},
            "clock",
        ),
        ({"code": 27, "msg": "Invalid session", "sub_code": "session-expired"}, "session"),
        ({"code": 15, "msg": "Remote service error", "sub_code": "isv.tmc-switch-off"}, "console"),
    ],
)
async def test_error_envelopes_name_what_to_check(envelope: dict[str, Any], hint: str) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return Gateway.reply({"error_response": envelope})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    top = TopClient(URL, APP_KEY, SECRET, client=client)
    with pytest.raises(TopCallError, match=hint):
        await top.call("taobao.tmc.messages.consume", {})


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500, text="oops"),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, text="[1, 2]"),
    ],
)
async def test_no_usable_answer_is_a_transport_error(response: httpx.Response) -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: response))
    top = TopClient(URL, APP_KEY, SECRET, client=client)
    with pytest.raises(TopTransportError) as caught:
        await top.call("taobao.tmc.messages.consume", {})
    assert SECRET not in str(caught.value)
    assert "sign" not in str(caught.value)


async def test_a_network_error_is_a_transport_error_without_the_query() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    top = TopClient(URL, APP_KEY, SECRET, client=client)
    with pytest.raises(TopTransportError) as caught:
        await top.call("taobao.tmc.messages.consume", {})
    assert "sign=" not in str(caught.value)
    assert "ConnectError" in str(caught.value)


# -- the source ----------------------------------------------------------------------------


async def test_confirms_go_out_in_batches_of_at_most_200() -> None:
    gateway = Gateway()
    published = gateway.publish(450)
    submit = Collect()
    source = TmcHttpSource(config(quantity=200), submit, metrics=Metrics(), client=gateway.client())
    source.start()
    try:
        await wait_for(lambda: sum(map(len, gateway.confirmed)) >= 450)
    finally:
        await source.close()
    assert sorted(i for batch in gateway.confirmed for i in batch) == published
    assert all(len(batch) <= 200 for batch in gateway.confirmed)
    assert len(gateway.confirmed) >= 3
    assert source.problem() is None or "not consuming" not in source.problem()  # type: ignore[operator]


async def test_a_failed_confirm_call_is_tried_again() -> None:
    gateway = Gateway()
    published = gateway.publish(20)
    gateway.confirm_failures = 2
    source = TmcHttpSource(config(), Collect(), metrics=Metrics(), client=gateway.client())
    source.start()
    try:
        await wait_for(lambda: sum(map(len, gateway.confirmed)) >= 20)
    finally:
        await source.close()
    assert sorted(i for batch in gateway.confirmed for i in batch) == published
    assert source.confirms_dropped == 0


async def test_an_empty_consume_waits_at_least_a_second() -> None:
    gateway = Gateway()
    source = TmcHttpSource(config(), Collect(), metrics=Metrics(), client=gateway.client())
    source.start()
    try:
        await asyncio.sleep(2.6)
    finally:
        await source.close()
    times = gateway.consume_times
    assert 2 <= len(times) <= 3
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert source.problem() is None


def watch_consumes(source: TmcHttpSource) -> list[float]:
    """When each consume call began, as the source makes it (before any I/O)."""
    starts: list[float] = []
    call = source.top.call

    async def watched(
        method: str, params: Mapping[str, str], *, retry_stale: bool = False
    ) -> dict[str, Any]:
        if method == "taobao.tmc.messages.consume":
            starts.append(time.monotonic())
        return await call(method, params, retry_stale=retry_stale)

    source.top.call = watched  # type: ignore[method-assign]
    return starts


async def test_consume_calls_never_overlap_and_none_begins_while_paused() -> None:
    gateway = Gateway()
    gateway.delay_s = 0.02
    gateway.publish(1000)

    async def slow(delivery: Delivery) -> None:
        await asyncio.sleep(0)
        delivery.acks[0].confirm()

    source = TmcHttpSource(
        config(quantity=10, server_confirm_timeout_s=0),
        slow,
        metrics=Metrics(),
        client=gateway.client(),
    )
    starts = watch_consumes(source)
    paused: list[tuple[float, float]] = []
    source.start()
    try:
        # Pause and resume over and over, the loop running while paused: it must see the
        # pause, and a resume must never start a second loop.
        for _ in range(20):
            await asyncio.sleep(0.01)
            source.pause("sink down")
            began = time.monotonic()
            await asyncio.sleep(0.04)
            paused.append((began, time.monotonic()))
            source.resume()
        await wait_for(lambda: not gateway.queue, timeout_s=10)
    finally:
        await source.close()
    assert gateway.max_running == 1
    assert len(starts) > 20
    assert [t for t in starts for began, ended in paused if began <= t <= ended] == []


async def test_pause_stops_consuming_confirms_go_out_and_resume_waits_for_the_hold() -> None:
    """Paused: no consume call however long, the confirms due still go out. Resumed with
    messages left unconfirmed: no consume before TMC's confirm timeout has passed since
    the call that handed them out (TMC puts them back, in order, only then)."""
    gateway = Gateway()
    gateway.publish(10)
    held: list[Delivery] = []
    with capture_logs() as logs:
        source = TmcHttpSource(
            config(quantity=10, server_confirm_timeout_s=3.0),
            Collect(held.append),
            metrics=Metrics(),
            client=gateway.client(),
        )
        starts = watch_consumes(source)
        source.start()
        try:
            # The second call came back empty: the loop is in its idle back-off (<= 1.5 s).
            await wait_for(lambda: len(held) == 10 and len(starts) == 2)
            source.pause("sink unreachable")
            assert source.problem() == "tmc_http paused: sink unreachable"
            for delivery in held[:6]:
                delivery.acks[0].confirm()
            await wait_for(lambda: sum(map(len, gateway.confirmed)) == 6)
            await asyncio.sleep(1.8)  # past the idle back-off: only the pause holds it
            assert len(starts) == 2
            source.resume()  # 4 messages were never confirmed (the pipeline gave them up)
            assert any("held" in note for note in source.notes())
            await wait_for(lambda: len(starts) == 3, timeout_s=5)
        finally:
            await source.close()
    assert [i for batch in gateway.confirmed for i in batch] == [
        d.message.message_id for d in held[:6]
    ]
    assert starts[2] >= starts[0] + 3.0
    assert source.holds == 1
    holds = [e for e in logs if e["event"].startswith("tmc_http consume held back")]
    assert len(holds) == 1
    assert holds[0]["log_level"] == "info"


async def test_a_resume_after_everything_was_confirmed_consumes_at_once() -> None:
    gateway = Gateway()
    gateway.publish(10)
    held: list[Delivery] = []
    source = TmcHttpSource(
        config(quantity=10, server_confirm_timeout_s=60),
        Collect(held.append),
        metrics=Metrics(),
        client=gateway.client(),
    )
    starts = watch_consumes(source)
    source.start()
    try:
        await wait_for(lambda: len(held) == 10 and len(starts) == 2)
        source.pause("sink unreachable")
        for delivery in held:
            delivery.acks[0].confirm()
        await wait_for(lambda: sum(map(len, gateway.confirmed)) == 10)
        await asyncio.sleep(1.6)  # past the idle back-off
        source.resume()
        resumed = time.monotonic()
        assert not any("held" in note for note in source.notes())
        await wait_for(lambda: len(starts) == 3, timeout_s=1)
    finally:
        await source.close()
    assert starts[2] - resumed < 0.5
    assert source.holds == 0


async def test_the_rest_of_a_batch_not_handed_on_holds_the_next_consume() -> None:
    gateway = Gateway()
    gateway.publish(10)
    got: list[Delivery] = []
    source: TmcHttpSource

    async def submit(delivery: Delivery) -> None:
        got.append(delivery)
        delivery.acks[0].confirm()
        if len(got) == 3:
            source.pause("sink unreachable")

    source = TmcHttpSource(
        config(quantity=10, server_confirm_timeout_s=1.5),
        submit,
        metrics=Metrics(),
        client=gateway.client(),
    )
    starts = watch_consumes(source)
    source.start()
    try:
        await wait_for(lambda: source.left_for_redelivery == 7)
        await wait_for(lambda: sum(map(len, gateway.confirmed)) == 3)
        await asyncio.sleep(0.2)
        source.resume()
        await wait_for(lambda: len(starts) == 2, timeout_s=5)
    finally:
        await source.close()
    assert starts[1] >= starts[0] + 1.5
    assert source.holds == 1


async def test_a_confirm_given_up_holds_the_consume_after_a_resume() -> None:
    gateway = Gateway()
    gateway.publish(10)
    gateway.confirm_failures = 1000
    source = TmcHttpSource(
        config(quantity=10, confirm_attempts=1, server_confirm_timeout_s=60),
        Collect(),
        metrics=Metrics(),
        client=gateway.client(),
    )
    source.start()
    try:
        await wait_for(lambda: source.confirms_dropped == 10)
        source.pause("sink unreachable")
        await asyncio.sleep(0.05)
        source.resume()
        assert any("held" in note for note in source.notes())
    finally:
        await source.close()


async def test_a_stale_connection_retries_the_confirm_and_never_the_consume() -> None:
    """A consume that fails as a closed keep-alive connection fails may have reached the
    gateway: it takes the error back-off instead of going out again at once."""
    gateway = Gateway()
    published = gateway.publish(20)
    broken = {"taobao.tmc.messages.consume": 1, "taobao.tmc.messages.confirm": 1}
    calls: list[str] = []

    async def flaky(request: httpx.Request) -> httpx.Response:
        method = dict(parse_qsl(request.url.query.decode()))["method"]
        calls.append(method)
        if broken.get(method):
            broken[method] -= 1
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return await gateway.handle(request)

    source = TmcHttpSource(
        config(),
        Collect(),
        metrics=Metrics(),
        client=httpx.AsyncClient(transport=httpx.MockTransport(flaky)),
    )
    source.start()
    try:
        await wait_for(lambda: sum(map(len, gateway.confirmed)) == 20)
    finally:
        await source.close()
    assert sorted(i for batch in gateway.confirmed for i in batch) == published
    assert source.top.stale_retries == 1  # the confirm, at once
    assert source.failed_calls == 1  # the consume: a failed call, backed off


async def test_a_wrong_secret_shows_in_problem_and_the_source_keeps_trying() -> None:
    gateway = Gateway(secret="the-real-one")
    gateway.publish(5)
    submit = Collect()
    source = TmcHttpSource(config(), submit, metrics=Metrics(), client=gateway.client())
    source.start()
    try:
        await asyncio.sleep(0.6)
    finally:
        await source.close()
    problem = source.problem()
    assert problem is not None
    assert "app_secret" in problem
    assert SECRET not in problem
    assert submit.got == []
    assert source.consume_calls >= 2  # retried with back-off, never gave up


async def test_unconfirmable_ids_are_skipped_and_counted() -> None:
    gateway = Gateway()
    gateway.queue = [entry(1.5), entry("12"), entry(True), entry(2**62, pub_time="bad")]
    submit = Collect()
    metrics = Metrics()
    source = TmcHttpSource(config(), submit, metrics=metrics, client=gateway.client())
    source.start()
    try:
        await wait_for(lambda: bool(gateway.confirmed))
    finally:
        await source.close()
    assert [d.message.message_id for d in submit.got] == [2**62]
    assert submit.got[0].message.malformed
    assert gateway.confirmed == [[2**62]]
    assert source.notes() and "skipped" in source.notes()[0]


async def test_acks_expire_after_max_hold_and_fail_sends_nothing() -> None:
    gateway = Gateway()
    gateway.publish(1)
    held: list[Delivery] = []
    source = TmcHttpSource(
        config(max_hold_s=1), Collect(held.append), metrics=Metrics(), client=gateway.client()
    )
    source.start()
    try:
        await wait_for(lambda: bool(held))
        ack = held[0].acks[0]
        assert ack.alive()
        ack.fail("sink refused")
        await asyncio.sleep(1.1)
        assert not ack.alive()
    finally:
        await source.close()
    assert gateway.confirmed == []
    assert source.failed == 1


async def test_a_closed_keep_alive_connection_is_retried_once_when_asked_then_reported() -> None:
    """A pooled connection the gateway had just closed fails the call before any answer:
    a call made with ``retry_stale=True`` is sent once more at once; a second such
    failure is a transport error. Without it (a consume), the failure is reported."""
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return Gateway.reply({"tmc_messages_confirm_response": {"is_success": True}})

    top = TopClient(
        URL, APP_KEY, SECRET, client=httpx.AsyncClient(transport=httpx.MockTransport(flaky))
    )
    confirm = {"s_message_ids": "1"}
    assert await top.call("taobao.tmc.messages.confirm", confirm, retry_stale=True) == {
        "is_success": True
    }
    assert (calls, top.stale_retries) == (2, 1)

    def dead(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    top = TopClient(
        URL, APP_KEY, SECRET, client=httpx.AsyncClient(transport=httpx.MockTransport(dead))
    )
    with pytest.raises(TopTransportError, match="ReadError"):
        await top.call("taobao.tmc.messages.confirm", confirm, retry_stale=True)
    assert top.stale_retries == 1


@pytest.mark.parametrize("error", [httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError])
async def test_a_consume_is_never_sent_twice(error: type[httpx.TransportError]) -> None:
    sent = 0

    def lost_answer(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        raise error("Server disconnected without sending a response.", request=request)

    top = TopClient(
        URL, APP_KEY, SECRET, client=httpx.AsyncClient(transport=httpx.MockTransport(lost_answer))
    )
    with pytest.raises(TopTransportError, match=error.__name__):
        await top.call("taobao.tmc.messages.consume", {"quantity": "10"})
    assert (sent, top.stale_retries) == (1, 0)


# -- hints name the keys of this source's section -----------------------------------------


def _http_top(handler: Callable[[httpx.Request], httpx.Response]) -> TopClient:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TopClient(
        URL, APP_KEY, SECRET, client=client, config_section="source.tmc_http", url_key="url"
    )


@pytest.mark.parametrize(
    ("envelope", "key"),
    [
        ({"code": 25, "msg": "Invalid signature"}, "source.tmc_http.app_secret"),
        ({"code": 29, "msg": "Invalid app key"}, "source.tmc_http.app_key"),
        ({"code": 1, "msg": "group not exist"}, "source.tmc_http.group"),
        ({"code": 22, "msg": "Invalid method"}, "source.tmc_http.url"),
        (
            {"code": 1, "msg": "no such thing", "sub_code": "isv.group-mismatch"},
            "source.tmc_http.group",
        ),
    ],
)
async def test_http_source_errors_name_its_own_keys(envelope: dict[str, Any], key: str) -> None:
    top = _http_top(lambda _r: Gateway.reply({"error_response": envelope}))
    with pytest.raises(TopCallError) as caught:
        await top.call("taobao.tmc.messages.consume", {})
    text = str(caught.value)
    assert key in text
    assert "source.tmc." not in text  # never the WebSocket source's keys


async def test_http_source_transport_errors_name_its_url() -> None:
    top = _http_top(lambda _r: httpx.Response(404, text="not here"))
    with pytest.raises(TopTransportError, match=r"check source\.tmc_http\.url"):
        await top.call("taobao.tmc.messages.consume", {})


async def test_the_http_source_says_which_of_its_keys_to_check() -> None:
    gateway = Gateway(secret="the-real-one")
    source = TmcHttpSource(config(), Collect(), metrics=Metrics(), client=gateway.client())
    source.start()
    try:
        await wait_for(lambda: source.consume_calls >= 1 and source.failed_calls >= 1)
    finally:
        await source.close()
    problem = source.problem()
    assert problem is not None
    assert "source.tmc_http.app_secret" in problem
    assert "source.tmc.app_secret" not in problem
