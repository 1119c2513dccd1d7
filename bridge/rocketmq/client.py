"""The one module that talks to rocketmq-client-python (and through it, librocketmq).

Producers, the push consumer, the messages they carry and the connection settings.
Everything else in the bridge uses this small typed surface, for these reasons:

* **The native library may be missing.** ``rocketmq-client-python`` 2.0.0 is a ctypes
  wrapper and needs ``librocketmq.so``, which is provisioned separately
  (``python -m bridge.rocketmq.provision``). Importing it lazily here turns a missing
  library into one clear :class:`NativeLibraryMissing` at start-up, and keeps
  ``tmc-bridge --version`` and the Kafka-only paths free of it.
* **Callbacks must never raise into C.** The library's own wrappers re-raise a Python
  exception from a ctypes callback; ctypes then prints it and hands C an unspecified
  int, which for a consumer is ``0`` = CONSUME_SUCCESS, i.e. a silent acknowledgement
  (docs/ons.md §4.6). Every callback here catches everything and returns the
  safe answer itself (RECONSUME_LATER, or UNKNOWN for a transaction check).
* **The native client logs to its own file**, which every client here has forwarded
  into the structured log (:mod:`bridge.rocketmq.native_log`).
* **Bytes, not text.** The library decodes bodies as UTF-8 and raises on anything else;
  a bridge must see the raw bytes to dead-letter them. Bodies are set with an explicit
  length too, so a NUL byte cannot cut a body short.

A failed send raises :class:`~bridge.errors.RocketMQSendError`, classified as permanent
(the message can never be sent) or not (:func:`classify`).

Sends and consumer callbacks are synchronous C calls (the GIL is released inside them):
run them on worker threads, never on the event loop.

**Sending by key: our queue, no client-side retry.** A keyed send goes through the C
function ``SendMessageOrderly`` (declared here with ctypes; the Python wrapper does not
expose it) with ``autoRetryTimes = 0`` and one selector callback that returns
:func:`queue_index`: ``crc32(key) % queues``. The wrapper's
``send_orderly_with_sharding_key`` (C ``SendMessageOrderlyByShardingKey``) must not be
used: it hard-codes three client-side retries, and librocketmq's
``sendAutoRetrySelectImpl`` sends each retry to the *next* queue of the route (after a
timeout or a broker busy), so one order's events could land in two queues. Here a failed
send is reported to the caller, whose retries (the sink's, with back-off) go through the
selector again, i.e. to the same queue. The queue count is the number of write queues in
the topic's route as the client last read it (the selector gets it as ``size``): when an
operator changes a topic's queue count, keys move to other queues from the next route
refresh on (RocketMQ's own caveat for ordered topics).

**Building a message costs a handful of C calls, all without releasing the GIL**
(``CreateMessage``, the body with its length, tags, keys, one call per property,
``DestroyMessage`` after the send): the setters copy a string and return, so they are
declared with :data:`ctypes.PYFUNCTYPE`; only the send itself releases the GIL. The
wrapper's ``Message`` was never destroyed (a leak of every message sent) and checked
every setter's status through an ``IntEnum``; neither happens here.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import structlog

from bridge.errors import BridgeError, RocketMQSendError
from bridge.rocketmq.address import fetch_name_servers
from bridge.rocketmq.native_log import ensure_forwarding

log = structlog.get_logger("bridge.rocketmq")

_lock = threading.Lock()
_modules: tuple[ModuleType, ModuleType] | None = None

#: Client-side and broker-side refusals that no retry can fix (the message itself is
#: wrong): the record goes to the dead-letter topic instead.
_PERMANENT_MARKERS = (
    "body size over max value",
    "body length is zero",
    "body is empty",
    "body is null",
    "contains illegal characters",
    "longer than topic max length",
    "topic is blank",
    "the message is illegal",
    "msg body or properties length",
    "properties length",
)


class NativeLibraryMissing(BridgeError):
    """librocketmq.so (or the rocketmq package) cannot be loaded."""


def _load() -> tuple[ModuleType, ModuleType]:
    """Import ``rocketmq.client`` and ``rocketmq.ffi`` once, with a clear error."""
    global _modules
    with _lock:
        if _modules is None:
            try:
                from rocketmq import client, ffi
            except ModuleNotFoundError as exc:
                if exc.name is None or exc.name.split(".")[0] != "rocketmq":
                    raise
                raise NativeLibraryMissing(
                    "RocketMQ support is not installed in this build: install "
                    "tmc-bridge[rocketmq] and run `python -m bridge.rocketmq.provision` (the "
                    "image: build it with --build-arg WITH_ROCKETMQ=true)"
                ) from None
            except (ImportError, OSError) as exc:
                raise NativeLibraryMissing(
                    "the RocketMQ native library librocketmq.so could not be loaded "
                    f"({exc}); run `python -m bridge.rocketmq.provision` (the Makefile's "
                    "install step and the Dockerfile do) or put librocketmq.so on the "
                    "library path"
                ) from None
            _modules = (client, ffi)
        return _modules


def ensure_library() -> None:
    """Raise :class:`NativeLibraryMissing` now rather than at the first send."""
    _load()


def classify(exc: BaseException) -> RocketMQSendError:
    """Map an exception of the library onto retriable / permanent."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    lowered = text.lower()
    permanent = any(marker in lowered for marker in _PERMANENT_MARKERS)
    return RocketMQSendError(f"{type(exc).__name__}: {text}", permanent=permanent)


def default_instance_name(group: str) -> str:
    """One client instance per group and process.

    librocketmq shares one client factory (name server list or address-server domain,
    broker connections, heartbeats) between all clients with the same instance name. A
    sink configured with a name server list and a source configured with an address
    server must not share one: the source was seen connecting to the address server's
    host:port as if it were a name server.
    """
    return f"{group}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What every RocketMQ client of the bridge needs to connect."""

    name_server: str | None
    name_server_domain: str | None
    credentials: tuple[str, str, str] | None
    instance_name: str | None = None

    def __repr__(self) -> str:  # never show the secret key
        access = self.credentials[0] if self.credentials else None
        return (
            f"ClientSettings(name_server={self.name_server!r}, "
            f"name_server_domain={self.name_server_domain!r}, access_key={access!r})"
        )


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    body: bytes
    tags: str | None
    keys: Sequence[str]
    properties: Sequence[tuple[str, str]]

    def wire(self) -> WireMessage:
        return WireMessage(
            topic=self.topic.encode(),
            body=self.body,
            tags=self.tags.encode() if self.tags else None,
            # RocketMQ's KEYS property is space separated; each key is indexed for queries.
            keys=" ".join(self.keys).encode() if self.keys else None,
            properties=tuple((n.encode(), v.encode()) for n, v in self.properties),
        )


@dataclass(slots=True)
class WireMessage:
    """A message as the C API takes it: every text already UTF-8 bytes (no NUL bytes:
    the C strings would end there; the body has an explicit length and may hold any)."""

    topic: bytes
    body: bytes
    tags: bytes | None
    #: Space-separated keys (RocketMQ's KEYS property), or None.
    keys: bytes | None
    properties: tuple[tuple[bytes, bytes], ...]


def queue_index(key: bytes, queues: int) -> int:
    """The queue (index into the topic's route) of a keyed send: CRC-32 (zlib, the same as
    ``java.util.zip.CRC32``) of the key's bytes modulo the number of write queues.

    With one broker the index is the queue id; with several, the route lists every
    broker's queues in the order the name server returned them. A change of the queue
    count moves keys (see the module docstring)."""
    return zlib.crc32(key) % queues if queues > 0 else 0


#: The topic of the keyed send running on this thread (read by the selector).
_sending = threading.local()
#: The queue count each topic's keyed sends last saw, and every change of it as
#: (topic, before, after): a change moves keys to other queues, so the sink logs it
#: (see :func:`queue_count_changes`). Written by the selector on the sending threads.
_queue_counts: dict[bytes, int] = {}
_queue_count_changes: collections.deque[tuple[bytes, int, int]] = collections.deque(maxlen=100)


def queue_count_changes() -> list[tuple[str, int, int]]:
    """The changes of a topic's queue count seen by keyed sends since the last call."""
    found = []
    while _queue_count_changes:
        topic, before, after = _queue_count_changes.popleft()
        found.append((topic.decode("utf-8", "replace"), before, after))
    return found


def _select(size: int, _message: int | None, arg: int | None) -> int:
    """librocketmq's QueueSelectorCallback; ``arg`` is ``crc32(key) + 1`` (never NULL:
    SendMessageOrderly refuses a NULL arg). Runs inside the send, on the sending thread;
    it must not raise (ctypes would hand C an unspecified int, and librocketmq indexes
    the queue list with it unchecked)."""
    if not arg or size <= 0:
        return 0
    topic = getattr(_sending, "topic", None)
    if topic is not None and _queue_counts.get(topic) != size:
        before = _queue_counts.get(topic)
        _queue_counts[topic] = size
        if before is not None:
            _queue_count_changes.append((topic, before, size))
    return (arg - 1) % size


#: One C function pointer for every keyed send, alive as long as the module (librocketmq
#: keeps only the raw pointer while a send runs).
_SELECTOR_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_SELECTOR = _SELECTOR_TYPE(_select)


class _Native:
    """Our own prototypes of the C functions a send uses (see the module docstring).

    Prototype objects bound to the wrapper's ``ffi.dll``: the wrapper's own declarations
    (argtypes, restypes) stay as they are for the code paths that still use it."""

    def __init__(self, ffi: ModuleType) -> None:
        dll = ffi.dll
        keep = ctypes.PYFUNCTYPE  # quick setters: keep the GIL
        release = ctypes.CFUNCTYPE  # network round trips: release the GIL
        c_int, c_void_p, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
        result_p = ctypes.POINTER(ffi._CSendResult)
        self.result_type: Any = ffi._CSendResult
        self.create = keep(c_void_p, c_char_p)(("CreateMessage", dll))
        self.destroy = keep(c_int, c_void_p)(("DestroyMessage", dll))
        self.body = keep(c_int, c_void_p, c_char_p, c_int)(("SetByteMessageBody", dll))
        self.tags = keep(c_int, c_void_p, c_char_p)(("SetMessageTags", dll))
        self.keys = keep(c_int, c_void_p, c_char_p)(("SetMessageKeys", dll))
        self.prop = keep(c_int, c_void_p, c_char_p, c_char_p)(("SetMessageProperty", dll))
        #: int SendMessageOrderly(CProducer*, CMessage*, QueueSelectorCallback, void* arg,
        #: int autoRetryTimes, CSendResult*)
        self.send_orderly = release(
            c_int, c_void_p, c_void_p, _SELECTOR_TYPE, c_void_p, c_int, result_p
        )(("SendMessageOrderly", dll))
        self.send_sync = release(c_int, c_void_p, c_void_p, result_p)(("SendMessageSync", dll))
        self.execute_type: Any = ffi.LOCAL_TRANSACTION_EXECUTE_CALLBACK
        #: int SendMessageTransaction(CProducer*, CMessage*,
        #: CLocalTransactionExecutorCallback, void* userData, CSendResult*)
        self.send_transaction = release(
            c_int, c_void_p, c_void_p, self.execute_type, c_void_p, result_p
        )(("SendMessageTransaction", dll))
        #: const char* GetOriginMessageProperty(CMessage*, const char*): the message a
        #: local transaction is handed is a plain one (not a MessageExt).
        self.origin_property = keep(c_char_p, c_void_p, c_char_p)(("GetOriginMessageProperty", dll))

    def build(self, msg: WireMessage) -> int:
        """A new CMessage; the caller destroys it (:attr:`destroy`) after the send."""
        handle: int | None = self.create(msg.topic)
        if not handle:
            raise RocketMQSendError("librocketmq could not create a message", permanent=False)
        body = msg.body
        # Explicit length: SetMessageBody would stop at the first NUL byte.
        self.body(handle, body, len(body))
        if msg.tags:
            self.tags(handle, msg.tags)
        if msg.keys:
            self.keys(handle, msg.keys)
        prop = self.prop
        for name, value in msg.properties:
            prop(handle, name, value)
        return handle


_native: _Native | None = None


def _native_api(ffi: ModuleType) -> _Native:
    global _native
    with _lock:
        if _native is None:
            _native = _Native(ffi)
        return _native


@dataclass(frozen=True, slots=True)
class SendReceipt:
    msg_id: str
    offset: int


@dataclass(frozen=True, slots=True)
class InMessage:
    """A consumed message, copied out of the C handle (which dies with the callback)."""

    topic: str
    tags: str
    keys: str
    body: bytes
    msg_id: str
    queue_id: int
    queue_offset: int
    reconsume_times: int
    born_timestamp: int
    store_timestamp: int
    properties: dict[str, str]


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


def _read(ffi: ModuleType, handle: Any, property_names: Sequence[str]) -> InMessage:
    dll = ffi.dll
    props: dict[str, str] = {}
    for name in property_names:
        value = dll.GetMessageProperty(handle, name.encode())
        if value:
            props[name] = _text(value)
    return InMessage(
        topic=_text(dll.GetMessageTopic(handle)),
        tags=_text(dll.GetMessageTags(handle)),
        keys=_text(dll.GetMessageKeys(handle)),
        body=dll.GetMessageBody(handle) or b"",
        msg_id=_text(dll.GetMessageId(handle)),
        queue_id=int(dll.GetMessageQueueId(handle)),
        queue_offset=int(dll.GetMessageQueueOffset(handle)),
        reconsume_times=int(dll.GetMessageReconsumeTimes(handle)),
        born_timestamp=int(dll.GetMessageBornTimestamp(handle)),
        store_timestamp=int(dll.GetMessageStoreTimestamp(handle)),
        properties=props,
    )


def _configure(client: Any, settings: ClientSettings) -> None:
    ensure_forwarding()
    if settings.name_server is not None:
        client.set_name_server_address(settings.name_server)
    else:
        assert settings.name_server_domain is not None
        client.set_name_server_address(fetch_name_servers(settings.name_server_domain))
    if settings.credentials is not None:
        client.set_session_credentials(*settings.credentials)


def _failed(client_mod: ModuleType, code: int) -> RocketMQSendError:
    """The error of a failed C call (its text is the calling thread's last error)."""
    try:
        client_mod.ffi_check(code)
    except Exception as exc:
        return classify(exc)
    return RocketMQSendError(f"status {code}", permanent=False)


def _receipt(result: Any) -> SendReceipt:
    if result.sendStatus != 0:
        # Stored on the master but not flushed/replicated as configured: not durable
        # in the sense the bridge promises, so it is retried (a possible duplicate).
        name = _SEND_STATUS.get(result.sendStatus, str(result.sendStatus))
        raise RocketMQSendError(f"send status {name}", permanent=False)
    return SendReceipt(msg_id=result.msgId.decode("ascii", "replace"), offset=result.offset)


#: CSendStatus values other than SEND_OK (0).
_SEND_STATUS = {1: "FLUSH_DISK_TIMEOUT", 2: "FLUSH_SLAVE_TIMEOUT", 3: "SLAVE_NOT_AVAILABLE"}


class Producer:
    """A started plain producer; :meth:`send` picks the queue by sharding key."""

    def __init__(
        self,
        group: str,
        settings: ClientSettings,
        *,
        send_timeout_ms: int,
        max_message_bytes: int,
    ) -> None:
        self._client_mod, self._ffi = _load()
        self._producer = self._client_mod.Producer(
            group, timeout=send_timeout_ms, max_message_size=max_message_bytes
        )
        if settings.instance_name:
            self._ffi.dll.SetProducerInstanceName(
                self._producer._handle, settings.instance_name.encode()
            )
        _configure(self._producer, settings)
        self._handle: int = self._producer._handle
        self._native = _native_api(self._ffi)

    def start(self) -> None:
        try:
            self._producer.start()
        except Exception as exc:
            raise classify(exc) from None

    def send(self, msg: OutMessage | WireMessage, sharding_key: str | bytes | None) -> SendReceipt:
        """Send synchronously; with a sharding key, to queue :func:`queue_index` of it,
        with no client-side retry (see the module docstring)."""
        wire = msg.wire() if isinstance(msg, OutMessage) else msg
        if sharding_key is None:
            return self._send(wire, None)
        key = sharding_key.encode() if isinstance(sharding_key, str) else sharding_key
        return self._send(wire, zlib.crc32(key))

    def send_to_shard(self, msg: WireMessage, shard: int) -> SendReceipt:
        """Send to queue ``shard % queues`` (``shard``: 0 ≤ shard < 2**32, e.g. the key's
        CRC-32, which the caller may have computed already for its own lanes)."""
        return self._send(msg, shard)

    def _send(self, msg: WireMessage, shard: int | None) -> SendReceipt:
        native = self._native
        result = native.result_type()
        handle = native.build(msg)
        try:
            if shard is None:
                code = native.send_sync(self._handle, handle, result)
            else:
                _sending.topic = msg.topic
                code = native.send_orderly(self._handle, handle, _SELECTOR, shard + 1, 0, result)
        finally:
            native.destroy(handle)
        if code != 0:
            raise _failed(self._client_mod, code)
        return _receipt(result)

    def shutdown(self) -> None:
        self._producer.shutdown()


#: The client-generated unique id of a message; for a transactional send, the id the
#: local transaction and the broker's check-back both see.
UNIQ_KEY = "UNIQ_KEY"


def transaction_id(message: InMessage) -> str:
    """The transaction id of a half message handed to a checker."""
    return message.properties.get(UNIQ_KEY) or message.msg_id


#: A transaction check: given the half message, True = commit, False = roll back,
#: None = unknown (ask again later).
Checker = Callable[[InMessage], bool | None]


class _LocalCall:
    """One transactional send in flight: its local transaction and what became of it."""

    __slots__ = ("error", "local", "ran")

    def __init__(self, local: Callable[[str], bool]) -> None:
        self.local = local
        self.ran = False
        self.error: BaseException | None = None


class TransactionalProducer:
    """A started transactional producer. The broker's check-backs go to ``checker``.

    **One send at a time.** librocketmq's C API keeps *one* local-transaction callback per
    producer: ``SendMessageTransaction`` stores the callback it is given in the producer's
    listener, then sends, then calls whatever callback the listener holds. The wrapper
    made a new callback per send, so two concurrent sends could run each other's local
    transaction (seen in tests). Here one callback serves every send and finds its send
    by the ``userData`` token it is handed, which removes that race; sends still go one
    at a time under a lock (each is a synchronous half-message round trip, the local
    transaction, and a one-way end-of-transaction request), see docs/rocketmq-performance.md.
    """

    def __init__(
        self,
        group: str,
        settings: ClientSettings,
        checker: Checker,
        *,
        send_timeout_ms: int,
        max_message_bytes: int,
        check_properties: Sequence[str],
    ) -> None:
        self._client_mod, self._ffi = _load()
        status = self._client_mod.TransactionStatus
        ffi = self._ffi
        native = self._native = _native_api(ffi)
        commit, rollback, unknown = int(status.COMMIT), int(status.ROLLBACK), int(status.UNKNOWN)

        def check(handle: Any, message: Any, _user: Any) -> int:
            # Runs on a librocketmq thread; must not raise (see the module docstring).
            try:
                decision = checker(_read(ffi, message, (UNIQ_KEY, *check_properties)))
            except BaseException as exc:
                log.error("callback failed; answered safely", callback="check", error=repr(exc))
                return unknown
            if decision is None:
                return unknown
            return commit if decision else rollback

        calls: dict[int, _LocalCall] = {}
        uniq_key = UNIQ_KEY.encode()

        def execute(handle: Any, message: Any, token: int | None) -> int:
            # Runs inside SendMessageTransaction, on the sending thread; must not raise.
            call = calls.get(token or 0)
            if call is None:  # cannot happen: every send registers its token first
                log.error("local transaction of an unknown send; answered UNKNOWN")
                return unknown
            call.ran = True
            try:
                # The local callback gets the plain message (not a MessageExt): only the
                # "Origin" accessors are valid on it.
                txn = _text(native.origin_property(message, uniq_key))
                if not txn:
                    raise RocketMQSendError("half message without UNIQ_KEY", permanent=False)
                return commit if call.local(txn) else rollback
            except BaseException as exc:
                call.error = exc
                # UNKNOWN leaves the decision to the check-back and the journal.
                return unknown

        self._calls = calls
        self._tokens = itertools.count(1)
        self._check_ref = ffi.TRANSACTION_CHECK_CALLBACK(check)
        self._execute_ref = native.execute_type(execute)
        self._handle = ffi.dll.CreateTransactionProducer(group.encode(), self._check_ref, None)
        if not self._handle:
            raise BridgeError("librocketmq could not create a transactional producer")
        # The library's TransactionMQProducer builds (and leaks) an extra producer in its
        # constructor; driving the C API directly avoids that and keeps the callback ours.
        self._producer = self._client_mod.Producer.__new__(self._client_mod.Producer)
        self._producer._handle = self._handle
        self._producer._callback_refs = []
        self._producer.set_timeout(send_timeout_ms)
        self._producer.set_max_message_size(max_message_bytes)
        if settings.instance_name:
            ffi.dll.SetProducerInstanceName(self._handle, settings.instance_name.encode())
        _configure(self._producer, settings)
        #: One send at a time (see the class docstring); devtools.bench_rocketmq measures
        #: what dropping it would change.
        self._send_lock: AbstractContextManager[Any] = threading.Lock()

    def start(self) -> None:
        try:
            self._producer.start()
        except Exception as exc:
            raise classify(exc) from None

    def send(self, msg: OutMessage | WireMessage, local: Callable[[str], bool]) -> SendReceipt:
        """Send a half message, run ``local(transaction_id)`` (True = commit), end the
        transaction.

        The transaction id is the half message's unique id (``UNIQ_KEY``), which the
        check-back carries too (:func:`transaction_id`). The end-of-transaction request
        is one-way in RocketMQ: when it is lost the broker asks the checker later, which
        must then give the same answer for that transaction id.
        """
        native = self._native
        wire = msg.wire() if isinstance(msg, OutMessage) else msg
        call = _LocalCall(local)
        result = native.result_type()
        handle = native.build(wire)
        try:
            token = next(self._tokens)
            self._calls[token] = call
            try:
                with self._send_lock:
                    code = native.send_transaction(
                        self._handle, handle, self._execute_ref, token, result
                    )
            finally:
                del self._calls[token]
        finally:
            native.destroy(handle)
        if code != 0:
            raise _failed(self._client_mod, code)
        if call.error is not None:
            raise RocketMQSendError(f"local transaction failed: {call.error}", permanent=False)
        if not call.ran or result.sendStatus != 0:
            # The half message was stored but not flushed/replicated as configured:
            # librocketmq rolled it back without running the local transaction.
            name = _SEND_STATUS.get(result.sendStatus, str(result.sendStatus))
            raise RocketMQSendError(
                f"half message rolled back: send status {name}", permanent=False
            )
        return SendReceipt(msg_id=result.msgId.decode("ascii", "replace"), offset=result.offset)

    def shutdown(self) -> None:
        self._producer.shutdown()


#: A consumer handler: True = consumed (CONSUME_SUCCESS), False = RECONSUME_LATER.
Handler = Callable[[InMessage], bool]


class PushConsumer:
    """A clustering push consumer whose handler can never acknowledge by accident."""

    def __init__(
        self,
        group: str,
        settings: ClientSettings,
        *,
        orderly: bool,
        threads: int,
        property_names: Sequence[str] = (),
    ) -> None:
        self._client_mod, self._ffi = _load()
        self._consumer = self._client_mod.PushConsumer(group, orderly=orderly)
        self._consumer.set_thread_count(threads)
        if settings.instance_name:
            self._consumer.set_instance_name(settings.instance_name)
        _configure(self._consumer, settings)
        self._property_names = tuple(property_names)
        self._orderly = orderly

    def subscribe(self, topic: str, expression: str, handler: Handler) -> None:
        ffi, names = self._ffi, self._property_names
        status = self._client_mod.ConsumeStatus

        def on_message(consumer: Any, message: Any) -> int:
            # Runs on a librocketmq thread; must not raise (see the module docstring).
            try:
                ok = handler(_read(ffi, message, names))
            except BaseException as exc:
                log.error("callback failed; answered safely", callback="consume", error=repr(exc))
                return int(status.RECONSUME_LATER)
            return int(status.CONSUME_SUCCESS if ok is True else status.RECONSUME_LATER)

        self._client_mod.ffi_check(
            ffi.dll.Subscribe(self._consumer._handle, topic.encode(), expression.encode())
        )
        # Registered through the library so it keeps the ctypes callback alive.
        self._consumer._register_callback(on_message)

    def start(self) -> None:
        try:
            self._consumer.start()
        except Exception as exc:
            raise classify(exc) from None

    def shutdown(self) -> None:
        self._consumer.shutdown()
