"""Pure parts of the RocketMQ side: config sections, ONS body mapping, the record ->
message mapping and the sink's per-lane resume logic (with a scripted producer; the
broker behaviour itself is covered by tests/integration). The journal has its own tests:
tests/unit/test_rocketmq_journal.py."""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path

import pytest

from bridge import config as cfgmod
from bridge.config import RocketMQSinkConfig, RoutingConfig
from bridge.errors import ConfigError, RocketMQSendError, SinkError
from bridge.headers import H_MESSAGE_ID, H_ONS_MSG_ID, H_TOPIC
from bridge.model import OutRecord
from bridge.observability.metrics import Metrics
from bridge.pipeline.ports import Batch
from bridge.pipeline.routing import Router
from bridge.rocketmq import client as sdk
from bridge.sinks.rocketmq import RocketMQSink, to_message
from bridge.sources.ons import to_source_message

TMC = {"app_key": "1", "app_secret": "s", "url": "ws://x/"}
RMQ = {"name_server": "127.0.0.1:9876", "producer_group": "g"}


def parse(doc: dict[str, object]) -> cfgmod.BridgeConfig:
    return cfgmod.parse(doc, env={})


def test_source_and_sink_sections_follow_their_type() -> None:
    ok = parse(
        {
            "source": {
                "type": "ons",
                "ons": {"name_server": "h:1", "group_id": "CID_x", "topics": ["t"]},
            },
            "sink": {"type": "rocketmq", "rocketmq": RMQ},
            "routing": {"topics": {"*": "tmc_all"}, "dead_letter_topic": "tmc_dlq"},
        }
    )
    assert ok.source.ons.channel == "CLOUD"
    assert ok.sink.rocketmq.channel == "ALIYUN"
    assert ok.sink.rocketmq.mode == "ordered"
    with pytest.raises(ConfigError, match=r"source.type is 'ons' but source.ons is missing"):
        parse({"source": {"type": "ons", "tmc": TMC}, "sink": {"kafka": {}}})
    with pytest.raises(ConfigError, match=r"sink.rocketmq is set but sink.type is 'kafka'"):
        parse(
            {
                "source": {"tmc": TMC},
                "sink": {
                    "kafka": {"bootstrap_servers": "b", "transactional_id": "t"},
                    "rocketmq": RMQ,
                },
            }
        )


def test_rocketmq_topic_names_are_checked_against_rocketmq_rules() -> None:
    doc = {"source": {"tmc": TMC}, "sink": {"type": "rocketmq", "rocketmq": RMQ}}
    # The defaults are Kafka-style names with dots, which RocketMQ refuses.
    with pytest.raises(ConfigError, match=r"'tmc.messages' is not a valid RocketMQ topic"):
        parse(doc)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of name_server and name_server_domain"),
        ({"name_server": "h:1", "name_server_domain": "http://a"}, "exactly one"),
        ({"name_server": "nohost"}, "is not host:port"),
        ({"name_server_domain": "h:1"}, "http"),
        ({"name_server": "h:1", "access_key": "ak"}, "go together"),
        ({"name_server": "h:1", "access_key": "ak", "secret_key": "sk", "channel": " "}, "empty"),
    ],
)
def test_client_settings_errors_are_clear(fields: dict[str, object], message: str) -> None:
    doc = {"source": {"tmc": TMC}, "sink": {"type": "rocketmq", "rocketmq": {**fields}}}
    doc["sink"]["rocketmq"]["producer_group"] = "g"  # type: ignore[index]
    with pytest.raises(ConfigError, match=message):
        parse(doc)


def test_secret_key_never_in_errors_and_read_from_file(tmp_path: Path) -> None:
    secret = "SENTINEL-secret-0042"
    doc = {
        "source": {"tmc": TMC},
        "sink": {
            "type": "rocketmq",
            "rocketmq": {**RMQ, "access_key": "ak", "secret_key": secret, "mode": "bogus"},
        },
    }
    with pytest.raises(ConfigError) as err:
        parse(doc)
    assert secret not in str(err.value)
    path = tmp_path / "sk"
    path.write_text(secret + "\n")
    cfg = RocketMQSinkConfig(
        name_server="h:1", producer_group="g", access_key="ak", secret_key_file=path
    )
    assert cfg.credentials("k") == ("ak", secret, "ALIYUN")
    assert secret not in repr(cfg)
    settings = sdk.ClientSettings("h:1", None, cfg.credentials("k"))
    assert secret not in repr(settings)


def in_message(body: bytes, **kw: object) -> sdk.InMessage:
    fields: dict[str, object] = {
        "topic": "jst_sync_1",
        "tags": "taobao_trade_TradeBuyerPay",
        "keys": "3658921147856043210",
        "body": body,
        "msg_id": "7F0000011B2A18B4AAC2733F4B6D0000",
        "queue_id": 2,
        "queue_offset": 17,
        "reconsume_times": 0,
        "born_timestamp": 1,
        "store_timestamp": 2,
        "properties": {},
    }
    fields.update(kw)
    return sdk.InMessage(**fields)  # type: ignore[arg-type]


SAMPLE = (
    b'{"topic":"taobao_trade_TradeBuyerPay","outgoing_id":5100407799123456789,'
    b'"publish_time":1718000000123,"user_id":62070001,"user_nick":"demo_shop",'
    b'"publisher_appkey":"12497914","content":"{\\"tid\\":3658921147856043210,'
    b'\\"payment\\":\\"59.90\\"}"}'
)


def test_jushita_body_maps_onto_the_tmc_record() -> None:
    m = to_source_message(in_message(SAMPLE))
    assert m.malformed is None
    assert (m.source, m.message_id, m.topic) == ("ons", 5100407799123456789, m.topic)
    assert m.topic == "taobao_trade_TradeBuyerPay"
    assert json.loads(m.content)["tid"] == 3658921147856043210
    assert (m.publish_time_ms, m.user_id, m.nick, m.publisher) == (
        1718000000123,
        62070001,
        "demo_shop",
        "12497914",
    )
    assert m.data_id == 3658921147856043210  # the RocketMQ key
    rec = Router(RoutingConfig(topics={"*": "t"})).route(m)
    assert rec.key == b"3658921147856043210"
    headers = dict(rec.headers)
    assert headers[H_MESSAGE_ID] == b"5100407799123456789"
    assert headers[H_ONS_MSG_ID] == b"7F0000011B2A18B4AAC2733F4B6D0000"


def test_content_as_object_and_missing_seller_are_accepted() -> None:
    body = json.dumps(
        {"topic": "taobao_fuwu_OrderCreated", "outgoing_id": 9, "content": {"order_id": 1}}
    ).encode()
    m = to_source_message(in_message(body, keys=""))
    assert m.malformed is None
    assert json.loads(m.content) == {"order_id": 1}
    assert (m.user_id, m.nick, m.data_id) == (None, None, None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not utf-8", "not valid UTF-8"),
        (b"[1,2]", "not a JSON object"),
        (b'{"content":"{}"}', "no 'topic'"),
        (b'{"topic":"x","content":5}', "no 'content'"),
    ],
)
def test_bad_bodies_are_marked_for_the_dead_letter_topic(body: bytes, reason: str) -> None:
    m = to_source_message(in_message(body))
    assert m.malformed is not None
    assert reason in m.malformed
    # Without outgoing_id the RocketMQ message id (stable across retries) is the id.
    assert m.message_id == int("7F0000011B2A18B4AAC2733F4B6D0000", 16)
    rec = Router(RoutingConfig()).route(m)
    assert rec.dead_letter_reason is not None


def test_record_maps_to_tags_keys_and_properties() -> None:
    rec = OutRecord(
        topic="tmc_trade",
        key=b"42",
        value=b"",
        headers=((H_TOPIC, b"taobao_trade_TradeCreate"), (H_MESSAGE_ID, b"7"), ("x", b"a\x01b")),
    )
    out = to_message(rec)
    assert (out.topic, out.tags, out.keys) == (b"tmc_trade", b"taobao_trade_TradeCreate", b"42 7")
    assert out.body == b"-"  # RocketMQ refuses empty bodies
    assert (b"x", b"a b") in out.properties
    assert (b"tmc.message_id", b"7") in out.properties
    # Not UTF-8: replaced, as a Java consumer would read it anyway.
    odd = to_message(OutRecord("t", None, b"v", (("y", b"\xff\x01"),)))
    assert (odd.keys, odd.tags, odd.properties) == (None, None, ((b"y", "\ufffd ".encode()),))
    # The str-based message of devtools and tests encodes to the same thing.
    same = sdk.OutMessage(
        "tmc_trade", b"-", "taobao_trade_TradeCreate", ["42", "7"], [("x", "a b")]
    )
    assert same.wire().keys == out.keys and same.wire().properties == ((b"x", b"a b"),)


def test_a_key_always_gets_the_same_queue_crc32_modulo_the_queue_count() -> None:
    """The queue choice of ordered sends: documented, language neutral (java.util.zip.CRC32
    gives the same), and what the C selector callback returns for the arg the send passes."""
    import zlib

    key = b"3658921147856043210"
    assert zlib.crc32(key) == 0x2F9DF994  # CRC-32/ISO-HDLC, as zlib and java.util.zip.CRC32
    for queues in (1, 2, 4, 8, 16):
        index = sdk.queue_index(key, queues)
        assert index == zlib.crc32(key) % queues
        # The send passes crc32(key) + 1 (SendMessageOrderly refuses a NULL arg) and the
        # selector gets the route's queue count as size.
        assert sdk._select(queues, None, zlib.crc32(key) + 1) == index
    assert sdk.queue_index(b"1", 4) == zlib.crc32(b"1") % 4
    assert sdk.queue_index(key, 0) == 0
    # Never an index C would read past the queue list with, whatever it is handed.
    assert sdk._select(0, None, 5) == 0
    assert sdk._select(4, None, None) == 0
    assert all(0 <= sdk._select(3, None, arg) < 3 for arg in (1, 2, 3, 2**32, 2**32 + 1))
    # Keys spread over the queues (the lane of a key is crc32 % lanes too).
    spread = {sdk.queue_index(str(k).encode(), 4) for k in range(100)}
    assert spread == {0, 1, 2, 3}
    # A change of the queue count moves keys (RocketMQ's caveat for ordered topics).
    moved = sum(
        sdk.queue_index(str(k).encode(), 4) != sdk.queue_index(str(k).encode(), 8)
        for k in range(1000)
    )
    assert moved > 300


class ScriptedProducer:
    """Fails the records whose key is in ``fail`` (once) or ``refuse`` (always)."""

    def __init__(self, fail: set[bytes], refuse: set[bytes]) -> None:
        self.fail, self.refuse = fail, refuse
        self.sent: list[str] = []
        self.shards: dict[bytes, set[int]] = {}
        self.lock = threading.Lock()

    def send_to_shard(self, msg: sdk.WireMessage, shard: int) -> sdk.SendReceipt:
        key = (msg.keys or b"").split()[0]
        assert shard == zlib.crc32(key)
        self.shards.setdefault(key, set()).add(shard)
        if key in self.refuse and msg.topic != b"dlq":
            raise RocketMQSendError("the message body size over max value", permanent=True)
        if key in self.fail:
            self.fail.discard(key)
            raise RocketMQSendError("No route info of this topic", permanent=False)
        with self.lock:
            self.sent.append(f"{msg.topic.decode()}:{key.decode()}:{msg.body.decode()}")
        return sdk.SendReceipt("id", 0)

    def shutdown(self) -> None:
        pass


def test_sink_resumes_a_batch_without_resending_and_keeps_key_order() -> None:
    cfg = RocketMQSinkConfig(name_server="h:1", producer_group="g", retries=0, send_threads=3)
    sink = RocketMQSink(cfg, metrics=Metrics())
    producer = ScriptedProducer(fail={b"2"}, refuse={b"3"})
    sink._producer = producer  # type: ignore[assignment]
    records = [
        OutRecord("t", str(k).encode(), f"v{i}".encode(), ((H_MESSAGE_ID, str(i).encode()),))
        for i, k in enumerate([1, 2, 3, 2, 1, 4])
    ]
    # Drive it the way the pipeline does: dead-letter refusals, retry after errors, always
    # with the same batch.
    batch = Batch(records)
    outcomes: list[str] = []
    for _ in range(10):
        try:
            refused = sink.write_batch(batch)
        except SinkError as exc:
            outcomes.append(f"error: {exc}")
            continue
        if not refused:
            break
        for r in refused:
            outcomes.append(f"refused {r.index}: {r.reason}")
            records[r.index] = OutRecord("dlq", b"3", b"v2", records[r.index].headers, "big")
    assert "refused 2: the message body size over max value" in outcomes
    assert any("No route info" in o for o in outcomes), outcomes
    assert sink._progress is None  # the batch completed
    sent = producer.sent
    assert len(sent) == len(set(sent)) == 6, sent  # nothing sent twice across the retries
    per_key: dict[str, list[str]] = {}
    for line in sent:
        _, key, value = line.split(":")
        per_key.setdefault(key, []).append(value)
    assert per_key["2"] == ["v1", "v3"]
    assert per_key["1"] == ["v0", "v4"]
    assert "dlq:3:v2" in sent
    # Every attempt of a key, the failed ones too, went to the key's one queue.
    assert all(len(shards) == 1 for shards in producer.shards.values())
    sink.close()


async def test_ons_handler_answers_only_after_the_pipeline_settled() -> None:
    """The consumer thread's verdict is the pipeline's ack: confirm -> success, fail ->
    reconsume later, and close() releases handlers still waiting, as reconsume later."""
    import asyncio

    from bridge.config import OnsSourceConfig
    from bridge.model import Delivery
    from bridge.sources.ons import OnsSource

    held: asyncio.Queue[Delivery] = asyncio.Queue()
    submit = held.put

    cfg = OnsSourceConfig(name_server="h:1", group_id="CID_x", topics=["t"])
    source = OnsSource(cfg, submit, metrics=Metrics())
    source._loop = asyncio.get_running_loop()
    source._reading = True

    first = asyncio.create_task(asyncio.to_thread(source._handle, in_message(SAMPLE)))
    delivery = await held.get()
    await asyncio.sleep(0.05)
    assert not first.done()  # still waiting for the sink
    delivery.acks[0].confirm()
    assert await first is True

    second = asyncio.create_task(asyncio.to_thread(source._handle, in_message(SAMPLE)))
    (await held.get()).acks[0].fail("sink down")
    assert await second is False

    third = asyncio.create_task(asyncio.to_thread(source._handle, in_message(SAMPLE)))
    await held.get()
    await source.close()
    assert await third is False
    # After close nothing new is handed to the pipeline.
    assert source._handle(in_message(SAMPLE)) is False
    assert held.empty()
    assert (source.consumed, source.reconsume_later) == (1, 2)


def test_a_change_of_a_topics_queue_count_is_reported_once() -> None:
    """The selector sees the route's queue count on every keyed send; a new count for a
    topic (keys move to other queues) is reported, the first sighting is not."""
    sdk.queue_count_changes()  # whatever earlier tests left
    sdk._sending.topic = b"orders-test"
    try:
        for size in (4, 4, 8, 8, 4):
            sdk._select(size, None, 1)
    finally:
        sdk._sending.topic = None
    assert sdk.queue_count_changes() == [("orders-test", 4, 8), ("orders-test", 8, 4)]
    assert sdk.queue_count_changes() == []
