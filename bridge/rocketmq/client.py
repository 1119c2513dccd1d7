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
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
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


def _build(client_mod: ModuleType, ffi: ModuleType, msg: OutMessage) -> Any:
    out = client_mod.Message(msg.topic)
    # Explicit length: SetMessageBody would stop at the first NUL byte.
    client_mod.ffi_check(ffi.dll.SetByteMessageBody(out, msg.body, len(msg.body)))
    if msg.tags:
        out.set_tags(msg.tags)
    if msg.keys:
        # RocketMQ's KEYS property is space separated; each key is indexed for queries.
        out.set_keys(" ".join(msg.keys))
    for name, value in msg.properties:
        out.set_property(name, value)
    return out


def _receipt(client_mod: ModuleType, result: Any) -> SendReceipt:
    if result.status != client_mod.SendStatus.OK:
        # Stored on the master but not flushed/replicated as configured: not durable
        # in the sense the bridge promises, so it is retried (a possible duplicate).
        raise RocketMQSendError(f"send status {result.status.name}", permanent=False)
    return SendReceipt(msg_id=result.msg_id, offset=int(result.offset))


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

    def start(self) -> None:
        try:
            self._producer.start()
        except Exception as exc:
            raise classify(exc) from None

    def send(self, msg: OutMessage, sharding_key: str | None) -> SendReceipt:
        """Send synchronously; with a sharding key, to queue hash(key) % queues."""
        try:
            out = _build(self._client_mod, self._ffi, msg)
            if sharding_key is None:
                result = self._producer.send_sync(out)
            else:
                result = self._producer.send_orderly_with_sharding_key(out, sharding_key)
        except RocketMQSendError:
            raise
        except Exception as exc:
            raise classify(exc) from None
        return _receipt(self._client_mod, result)

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


class TransactionalProducer:
    """A started transactional producer. The broker's check-backs go to ``checker``."""

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

        def check(handle: Any, message: Any, _user: Any) -> int:
            # Runs on a librocketmq thread; must not raise (see the module docstring).
            try:
                decision = checker(_read(ffi, message, (UNIQ_KEY, *check_properties)))
            except BaseException as exc:
                log.error("callback failed; answered safely", callback="check", error=repr(exc))
                return int(status.UNKNOWN)
            if decision is None:
                return int(status.UNKNOWN)
            return int(status.COMMIT if decision else status.ROLLBACK)

        self._check_ref = ffi.TRANSACTION_CHECK_CALLBACK(check)
        ffi.dll.GetOriginMessageProperty.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ffi.dll.GetOriginMessageProperty.restype = ctypes.c_char_p
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
        self._status = status
        # librocketmq's transactional send is not safe to call concurrently: with several
        # threads it was seen running the local transaction of *another* call (a stale
        # callback). One call at a time, always.
        self._send_lock = threading.Lock()

    def start(self) -> None:
        try:
            self._producer.start()
        except Exception as exc:
            raise classify(exc) from None

    def send(self, msg: OutMessage, local: Callable[[str], bool]) -> SendReceipt:
        """Send a half message, run ``local(transaction_id)`` (True = commit), end the
        transaction.

        The transaction id is the half message's unique id (``UNIQ_KEY``), which the
        check-back carries too (:func:`transaction_id`). The end-of-transaction request
        is one-way in RocketMQ: when it is lost the broker asks the checker later, which
        must then give the same answer for that transaction id.
        """
        status, ffi = self._status, self._ffi
        outcome: list[BaseException] = []

        def execute(handle: Any, message: Any, _user: Any) -> int:
            try:
                # The local callback gets the plain message (not a MessageExt): only the
                # "Origin" accessors are valid on it.
                txn = _text(ffi.dll.GetOriginMessageProperty(message, UNIQ_KEY.encode()))
                if not txn:
                    raise RocketMQSendError("half message without UNIQ_KEY", permanent=False)
                return int(status.COMMIT if local(txn) else status.ROLLBACK)
            except BaseException as exc:
                outcome.append(exc)
                # UNKNOWN leaves the decision to the check-back and the journal.
                return int(status.UNKNOWN)

        callback = ffi.LOCAL_TRANSACTION_EXECUTE_CALLBACK(execute)
        result = ffi._CSendResult()
        try:
            out = _build(self._client_mod, ffi, msg)
            with self._send_lock:
                status_code = ffi.dll.SendMessageTransaction(
                    self._handle, out, callback, None, ctypes.pointer(result)
                )
            self._client_mod.ffi_check(status_code)
        except Exception as exc:
            raise classify(exc) from None
        if outcome:
            raise RocketMQSendError(f"local transaction failed: {outcome[0]}", permanent=False)
        return SendReceipt(msg_id=_text(result.msgId), offset=int(result.offset))

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
