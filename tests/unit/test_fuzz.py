"""Fuzzing: bad input never stops the bridge (issue item 7).

Only the bridge's own error types may escape a layer, and nothing hangs:

* codec: ``decode`` / ``decode_head`` of any bytes give a Frame or FrameError; valid frames
  round-trip.
* ``ClientSession.receive`` / ``receive_oversized``: an event or a TmcError; every Push is
  confirmable, its fields are in range, and it routes (plain and envelope) without raising.
* ``ServerSession.receive``: a ServerEvent or a TmcError, strict and lenient.
* ``ons.to_source_message``: never raises, and what it returns routes.
* ``Pipeline.submit``: never raises; every delivery is confirmed once its batch committed.

Inputs come from three generators: raw bytes, byte mutations of the protocol's test
vectors, and a grammar that builds well-formed frames around hostile values. Grammar
frames (and ONS bodies) are checked against a model of the expected outcome written from
the protocol rules (event type, every Push field, which field the malformed reason names,
the routing key or dead-letter reason), not only against "did not raise".

Speed: hypothesis picks the hostile case of each field by name, which keeps falsifying
examples readable; the filler (digits, text, positions) is read from one drawn byte string
by :class:`Src`. That is far cheaper than one hypothesis draw per value and still shrinks:
a zeroed or used-up byte string yields the simplest choice everywhere.

Every property counts its inputs (COUNTS); tests/unit/conftest.py prints the counts and the
seed (repeat a run with ``--hypothesis-seed=N``), and the module fails when all its
properties passed but generated fewer than MIN_TOTAL inputs.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gzip
import io
import json
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, event, example, given, seed, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from bridge.config import PipelineConfig, RoutingConfig
from bridge.errors import FrameError, ProtocolError, TmcError
from bridge.headers import H_DLQ_TRUNCATED
from bridge.model import Delivery, OutRecord, SourceMessage
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.routing import Router
from bridge.rocketmq.client import InMessage
from bridge.sources import ons
from bridge.sources.tmc import codec
from bridge.sources.tmc import server as tmc_server
from bridge.sources.tmc import session as tmc_session
from bridge.sources.tmc.codec import Fmt, Frame, MessageType, Value
from tests.unit.test_codec import CONNECTACK_72, FAILED_ACK_76, PUSH_73, TOKEN, captures
from tests.unit.test_pipeline import ScriptedSink
from tests.unit.test_protocol import (
    CONFIRM_74,
    CONNECT_71,
    FAILED_76,
    PULL_75,
    SECRET,
    online_session,
)

if TYPE_CHECKING:
    from tests.unit.conftest import FuzzReport

# ----------------------------------------------------------------------------- budget

#: Examples per property. Together well over MIN_TOTAL in about two minutes on 2 cores.
EXAMPLES = {
    "codec_bytes": 22_000,
    "codec_mutations": 20_000,
    "codec_roundtrip": 5_000,
    "client_bytes": 14_000,
    "client_grammar": 16_000,
    "client_oversized": 5_000,
    "server": 12_000,
    "ons": 8_000,
    "pipeline": 1_500,
    "metrics": 600,
}
MIN_TOTAL = 100_000
#: One input (decode + session + routing) taking this long counts as a hang.
MAX_INPUT_S = 5.0

#: Generated inputs per property, counted inside the properties.
COUNTS: Counter[str] = Counter()
#: Examples run per property (the pipeline properties feed several inputs per example).
RUNS: Counter[str] = Counter()
#: Outcomes per property ("client_grammar:malformed", ...), for the sanity checks.
SEEN: Counter[str] = Counter()
SLOWEST: dict[str, float] = {}


def fuzz_settings(prop: str) -> settings:
    return settings(
        max_examples=EXAMPLES[prop],
        # Wall time is checked per input (MAX_INPUT_S); hypothesis' deadline would flake on
        # a busy 2-core machine for the examples that inflate 4 MiB of gzip on purpose.
        deadline=None,
        # No example database: a failure is repeated with the printed seed (or print_blob).
        database=None,
        print_blob=True,
        # too_slow: some examples inflate a 4 MiB gzip member or scan 5,000 nesting levels
        # on purpose, which is what is being tested. data_too_large: the pipeline property
        # draws lists of whole frames.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def saw(prop: str, outcome: str) -> None:
    SEEN[f"{prop}:{outcome}"] += 1
    event(outcome)


@contextmanager
def one_input(prop: str, inputs: int = 1) -> Iterator[None]:
    """Count the example's inputs and fail it when it takes long enough to be a hang."""
    COUNTS[prop] += inputs
    RUNS[prop] += 1
    started = time.perf_counter()
    yield
    took = time.perf_counter() - started
    if took > SLOWEST.get(prop, 0.0):
        SLOWEST[prop] = took
    assert took < MAX_INPUT_S, f"one input took {took:.1f} s"


def run_property(
    prop: str, test: Callable[[], None], report: FuzzReport, needs: Sequence[str] = ()
) -> None:
    """Run a hypothesis property with the session's seed; then check that it generated all
    its examples and that each outcome in ``needs`` occurred at least once."""
    before = RUNS[prop]
    try:
        seed(report.seed)(test)()
    except BaseException as exc:
        exc.add_note(f"fuzz seed {report.seed}: repeat with --hypothesis-seed={report.seed}")
        raise
    finally:
        report.counts[prop] = COUNTS[prop]
        report.slowest[prop] = SLOWEST.get(prop, 0.0)
    assert RUNS[prop] - before >= EXAMPLES[prop]
    missing = [n for n in needs if SEEN[f"{prop}:{n}"] == 0]
    seen = sorted((k, v) for k, v in SEEN.items() if k.startswith(prop + ":"))
    assert not missing, f"the generators never produced {missing}; outcomes: {seen}"
    report.completed.add(prop)


@pytest.fixture(scope="module", autouse=True)
def _module_total(fuzz_report: FuzzReport) -> Iterator[None]:
    yield
    if fuzz_report.completed >= set(EXAMPLES):
        total = sum(fuzz_report.counts[p] for p in EXAMPLES)
        assert total >= MIN_TOTAL, f"only {total:,} fuzz inputs: {dict(fuzz_report.counts)}"


# ----------------------------------------------------------------------------- filler


#: Characters of generated text: digits (ASCII and not), JSON syntax, controls, RTL, emoji.
CHARS = [
    *"0123456789abcxyzXYZ _-.:/*?", *'"\\[]{},', "²", "٣", "１", "𝟗", "é", "ß", "中",
    "\x00", "\n", "\t", "\u202e", "\ufeff", "\ufffd", "😀", "\u3000",
]  # fmt: skip


class Src:
    """Choices read from a drawn byte string; once it is used up every read gives 0."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes), "little")

    def below(self, n: int) -> int:
        if n <= 1:
            return 0
        return self.uint(1 if n <= 256 else 8) % n

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.below(len(seq))]

    def chance(self, one_in: int) -> bool:
        return self.below(one_in) == one_in - 1

    def blob(self, max_len: int) -> bytes:
        return self.take(self.below(max_len + 1))

    def text(self, max_len: int) -> str:
        return "".join(CHARS[b % len(CHARS)] for b in self.blob(max_len))

    def shuffle(self, items: list[Any]) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def names(*cases: Iterable[str], **weights: int) -> st.SearchStrategy[str]:
    """One of the names, each once, except those given a weight."""
    merged = {name: 1 for group in cases for name in group}
    merged.update(weights)
    return st.sampled_from([name for name, w in merged.items() for _ in range(w)])


# ----------------------------------------------------------------------------- wire model

INT64_MIN, INT64_MAX = tmc_session.INT64_MIN, tmc_session.INT64_MAX
MAX_TIME_MS = tmc_session.MAX_TIME_MS
LIMIT = tmc_session.DEFAULT_MAX_CONTENT_BYTES
I16, I32, I64 = struct.Struct("<h"), struct.Struct("<i"), struct.Struct("<q")
INT_FMTS = {2: struct.Struct("<b"), 3: I16, 4: I32, 5: I64, 6: I64}
INT_RANGE = {f: (-(2 ** (8 * s.size - 1)), 2 ** (8 * s.size - 1) - 1) for f, s in INT_FMTS.items()}
SEND, SENDACK, CONNECT, CONNECTACK = 2, 3, 0, 1
BROKEN = -1


def counted(raw: bytes) -> bytes:
    return I32.pack(len(raw)) + raw


@dataclass(frozen=True, slots=True)
class W:
    """A Custom value as written here: format code and value (raw bytes for String and
    ByteArray, so that invalid UTF-8 can be sent). ``broken`` is a payload no reader takes."""

    fmt: int
    data: int | bytes | None = None
    broken: bytes | None = None

    def wire(self) -> bytes:
        head = bytes((self.fmt,))
        if self.broken is not None:
            return head + self.broken
        if self.fmt == 0:
            return head
        if isinstance(self.data, bytes):
            return head + counted(self.data)
        assert isinstance(self.data, int)
        return head + INT_FMTS[self.fmt].pack(self.data)


def s(text: str) -> W:
    return W(1, text.encode())


@dataclass(frozen=True, slots=True)
class H:
    """One header: its bytes, its type code (BROKEN: makes the frame unreadable) and, for a
    Custom header, the key as a reader decodes it (invalid UTF-8 replaced)."""

    raw: bytes
    code: int
    key: str = ""
    value: W | None = None


def custom(key: str | bytes, w: W) -> H:
    k = key.encode() if isinstance(key, str) else key
    code = BROKEN if w.broken is not None else 1
    return H(b"\x01\x00" + counted(k) + w.wire(), code, k.decode("utf-8", "replace"), w)


def token_header(raw: bytes) -> H:
    return H(b"\x05\x00" + counted(raw), 5, value=W(1, raw))


def some_int(src: Src, fmt: int) -> int:
    lo, hi = INT_RANGE[fmt]
    i = src.below(10)
    if i == 9:
        return lo + src.uint(8) % (hi - lo + 1)
    return (0, 1, -1, lo, hi, lo + 1, hi - 1, 3, 2200000000123456789 % hi)[i]


def fixed_width(src: Src) -> W:
    fmt = src.pick([2, 3, 4, 5, 6])
    return W(fmt, some_int(src, fmt))


def any_value(src: Src) -> W:
    return src.pick(GENERIC)(src) or W(0)


def extra_header(src: Src) -> H:
    """Status code, phrase, flag, or a Custom entry with a key that nothing reads."""
    i = src.below(4)
    if i == 0:
        return H(b"\x02\x00" + I32.pack(some_int(src, 4)), 2)
    if i == 1:
        return H(b"\x03\x00" + counted(src.text(12).encode()), 3)
    if i == 2:
        return H(b"\x04\x00" + I32.pack(some_int(src, 4)), 4)
    key = src.pick(["outtime", "msg", "x", "", "Content", "id ", "ID", "ｉｄ", b"id\xff", "a\x00"])
    return custom(key, any_value(src))


def damage_header(src: Src, how: str) -> H:
    junk = src.blob(8)
    if how == "unknown_header":
        return H(I16.pack(src.pick([6, 7, 255, 0x7FFF, -1, -32768])) + junk, BROKEN)
    if how == "bad_format":
        return custom("id", W(src.pick([8, 9, 0x7F, 0xFF]), broken=junk))
    if how == "negative_length":
        return custom("content", W(src.pick([1, 7]), broken=I32.pack(src.pick([-1, -(2**31)]))))
    if how == "overlong_length":
        return custom("topic", W(src.pick([1, 7]), broken=I32.pack(2**31 - 1) + junk))
    assert how == "negative_key_length"
    return H(b"\x01\x00" + I32.pack(-1) + junk, BROKEN)


@dataclass(frozen=True, slots=True)
class Built:
    """A generated frame: bytes plus the headers they were built from."""

    raw: bytes
    mtype: int
    headers: tuple[H, ...]
    #: The frame was cut to this length (no EndOfHeaders): no reader may accept it.
    cut: int | None = None


def assemble(mtype: int, headers: list[H], src: Src, damage: str) -> Built:
    src.shuffle(headers)  # headers in any order
    if damage not in ("none", "truncated", "trailing"):
        headers.insert(src.below(len(headers) + 1), damage_header(src, damage))
    raw = bytes((2, mtype)) + b"".join(h.raw for h in headers) + b"\x00\x00"
    if damage == "trailing":
        raw += src.blob(16) or b"\x01"  # ignored after EndOfHeaders, like the Java reader
    if damage == "truncated":
        cut = src.below(len(raw) - 1)
        return Built(raw[:cut], mtype, tuple(headers), cut)
    return Built(raw, mtype, tuple(headers))


DAMAGE = names(
    none=24,
    trailing=1,
    truncated=1,
    unknown_header=1,
    bad_format=1,
    negative_length=1,
    overlong_length=1,
    negative_key_length=1,
)


@dataclass
class Decoded:
    """What a reader must make of a Built frame (the model of codec.decode)."""

    mtype: int
    custom: dict[str, W]
    token: str | None = None


def model_decode(built: Built, upto: int | None = None) -> Decoded | None:
    """None when the frame is malformed. ``upto``: decode_head of that many bytes, i.e.
    the headers complete within them, up to the first malformed one."""
    if upto is None and built.cut is not None:
        return None
    if upto is not None and upto < 4:
        return None
    out = Decoded(built.mtype, {})
    pos = 2
    for h in built.headers:
        if h.code == BROKEN:
            return out if upto is not None else None
        pos += len(h.raw)
        if upto is not None and pos > upto:
            return out
        if h.code == 1:
            assert h.value is not None
            out.custom[h.key] = h.value
        elif h.code == 5:
            assert h.value is not None and isinstance(h.value.data, bytes)
            out.token = h.value.data.decode("utf-8", "replace")
    return out


# ----------------------------------------------------------------------------- field cases

#: Strings that are not decimal Int64s though some parser might think so.
UNICODE_DIGITS = ["²", "٣", "١٢٣", "12²", "１２３", "𝟗", "߁", "൧", "Ⅻ", "½", "٣" * 19]
JUNK_NUMBERS = ["", " ", " 1", "1 ", "+1", "1_000", "0x1f", "1e3", "1.0", "NaN", "-", "1\x00"]
BIG_NUMBERS = [str(INT64_MAX + 1), str(2**64), "9" * 19, "1" + "0" * 19, "0" * 19 + "1"]
NEGATIVE_NUMBERS = ["-1", "-0", str(INT64_MIN), str(INT64_MIN - 1), "-" + "9" * 30]
BAD_UTF8 = [b"12\xff", b"\xed\xa0\x80", b"\xc0\xb1", b"\xff\xfe\xfd", b"1\x80", b"\xf4\x90\x80\x80"]


def long_digits(src: Src) -> W:
    n = src.pick([20, 21, 64, 400, 4300, 4301, 5000, 20000])
    return s(("1234567890" * (n // 10 + 1))[:n])


Case = Callable[[Src], W | None]

INT_CASES: dict[str, Case] = {
    "absent": lambda src: None,
    "void": lambda src: W(0),
    "int64": lambda src: W(5, some_int(src, 5)),
    "byte": lambda src: W(2, some_int(src, 2)),
    "int16": lambda src: W(3, some_int(src, 3)),
    "int32": lambda src: W(4, some_int(src, 4)),
    "date": lambda src: W(6, some_int(src, 6)),
    "str_digits": lambda src: s(str(src.uint(8) % (INT64_MAX + 1))),
    "str_int64_max": lambda src: s(str(INT64_MAX)),
    "str_too_big": lambda src: s(src.pick(BIG_NUMBERS)),
    "str_long_digits": long_digits,
    "str_negative": lambda src: s(src.pick(NEGATIVE_NUMBERS)),
    "str_unicode_digits": lambda src: s(src.pick(UNICODE_DIGITS)),
    "str_junk": lambda src: s(src.pick(JUNK_NUMBERS)),
    "str_text": lambda src: s(src.text(24)),
    "str_bad_utf8": lambda src: W(1, src.pick(BAD_UTF8)),
    "bytearray": lambda src: W(7, src.pick([b"", b"1", b"123", I64.pack(7), src.blob(16)])),
}
TIME_CASES: dict[str, Case] = {
    **INT_CASES,
    "date_ok": lambda src: W(6, src.uint(8) % (MAX_TIME_MS + 1)),
    "date_edge": lambda src: W(6, src.pick([0, MAX_TIME_MS, MAX_TIME_MS + 1, -1, INT64_MAX])),
    "str_time_ok": lambda src: s(str(src.uint(8) % (MAX_TIME_MS + 1))),
    "str_400_digits": lambda src: s("7" * 400),
}
TEXT_CASES: dict[str, Case] = {
    "absent": lambda src: None,
    "void": lambda src: W(0),
    "text": lambda src: s(src.text(30)),
    "empty": lambda src: s(""),
    "long": lambda src: s("長" * 10_000),
    "bad_utf8": lambda src: W(1, src.pick(BAD_UTF8)),
    "int": fixed_width,
    "bytearray": lambda src: W(7, src.blob(16)),
}
UNKEYED_TOPICS = ["tmall_fuwu_ServiceItemUpdate", "taobao_tradeX", "TAOBAO_TRADE_X", "*", "\n", "x"]
TOPIC_CASES: dict[str, Case] = {
    **TEXT_CASES,
    "trade": lambda src: s(src.pick(["taobao_trade_TradeBuyerPay", "taobao_trade_\n"])),
    "refund": lambda src: s("taobao_refund_RefundCreated"),
    "item": lambda src: s("taobao_item_ItemUpdate"),
    "unkeyed": lambda src: s(src.pick(UNKEYED_TOPICS)),
}
KIND_CASES: dict[str, Case] = {
    "data": lambda src: W(2, 3),
    "absent": lambda src: None,
    "void": lambda src: W(0),
    "other_byte": lambda src: W(2, src.pick([0, 1, 2, 20, -1, 127, -128])),
    "wide_3": lambda src: W(src.pick([3, 4, 5, 6]), 3),
    "str_3": lambda src: s(src.pick(["3", " 3", "٣", "x", "3" * 5000])),
    "bytearray": lambda src: W(7, b"\x03"),
}
TOKEN_CASES: dict[str, Callable[[Src], bytes | None]] = {
    "ours": lambda src: TOKEN.encode(),
    "foreign": lambda src: src.pick(
        [b"another-token", TOKEN.upper().encode(), TOKEN[:-1].encode()]
    ),
    "absent": lambda src: None,
    "empty": lambda src: b"",
    "bad_utf8": lambda src: TOKEN.encode()[:-1] + b"\xff",
}
#: Any value for any key (extras, duplicated keys, client frames sent to the server).
GENERIC: list[Case] = [*INT_CASES.values(), *TEXT_CASES.values()]


# ----------------------------------------------------------------------------- content cases


@dataclass(frozen=True, slots=True)
class Content:
    """A content value and what must come of it.

    ``inflated``: SourceMessage.content, None when the push must be malformed (its content
    is then the bytes received). ``key`` / ``dead``: on a topic keyed by tid, the record
    key, or a text the dead-letter reason contains ("" for any reason). ``sure``: False
    where the malformed verdict is a choice of the implementation (trailing data after a
    gzip member, which Java's GZIPInputStream ignores)."""

    w: W
    inflated: bytes | None
    key: bytes | None = None
    dead: str | None = None
    sure: bool = True


def _nest(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


#: The content of the spec's push vector (§7.3): an order event keyed by tid.
CANONICAL = str(codec.decode(PUSH_73).get("content")).encode()
#: name -> (JSON text, record key on a topic keyed by tid, or what the dead-letter reason says)
JSON_CASES: dict[str, tuple[bytes, bytes | None, str | None]] = {
    "canonical": (CANONICAL, b"4123456789012345678", None),
    "empty": (b"", None, "not JSON"),
    "no_key": (b'{"x":1}', None, "none of the key fields"),
    "tid_20_digits": (b'{"tid":1' + b"0" * 19 + b"}", b"1" + b"0" * 19, None),
    "tid_21_digits": (b'{"tid":1' + b"0" * 20 + b"}", None, "not an id (0 ≤ id < 10^20)"),
    "tid_31_digits": (b'{"tid":1' + b"0" * 30 + b"}", None, "not an id (0 ≤ id < 10^20)"),
    "tid_5000_digits": (b'{"tid":' + b"9" * 5000 + b"}", None, "not JSON"),
    "tid_float": (b'{"tid":1.5}', None, "float"),
    "tid_1e400": (b'{"tid":1e400}', None, "float"),
    "tid_nan": (b'{"tid":NaN}', None, "float"),
    "tid_superscript": ('{"tid":"²"}'.encode(), None, "not an integer id"),
    "tid_arabic": ('{"tid":"١٢٣"}'.encode(), None, "not an integer id"),
    "tid_fullwidth": ('{"tid":"１２３"}'.encode(), None, "not an integer id"),
    "tid_escaped_digit": (b'{"tid":"\\u0661"}', None, "not an integer id"),
    "tid_string_padded": (b'{"tid":" 123 "}', b"123", None),
    "tid_string_20": (b'{"tid":"' + b"1" * 20 + b'"}', b"1" * 20, None),
    "tid_string_21": (b'{"tid":"' + b"1" * 21 + b'"}', None, "not an integer id"),
    "tid_negative": (b'{"tid":-5}', None, "not an id (0 ≤ id < 10^20)"),
    "tid_bool": (b'{"tid":true}', None, "bool"),
    "tid_null": (b'{"tid":null}', None, "none of the key fields"),
    "tid_list": (b'{"tid":[1]}', None, "list"),
    "duplicated_keys": (b'{"tid":1,"tid":2}', b"2", None),
    "array": (b"[1]", None, "not a JSON object"),
    "not_json": (b"hello", None, "not JSON"),
    "bad_utf8_in_string": (b'{"tid":1,"s":"\xff\xfe"}', None, "not valid UTF-8"),
    "utf8_surrogate_bytes": (b'{"tid":1,"s":"\xed\xa0\x80"}', None, "not valid UTF-8"),
    "escaped_lone_surrogate": (b'{"tid":1,"s":"\\ud800"}', b"1", None),
    "depth_64": (f'{{"tid":1,"a":{_nest(63)}}}'.encode(), b"1", None),
    "depth_65": (f'{{"tid":1,"a":{_nest(64)}}}'.encode(), None, "max_json_depth"),
    "brackets_in_strings": (b'{"tid":7,"s":"' + b"[{" * 5000 + b'\\"["}', b"7", None),
    "unterminated_string": (b'["' + b"[" * 5000, None, ""),
    **{
        f"arrays_{d}": (f'{{"tid":1,"a":{_nest(d - 1)}}}'.encode(), None, "max_json_depth")
        for d in (500, 1000, 3000, 5000)
    },
    **{
        f"objects_{d}": (('{"a":' * d + "1" + "}" * d).encode(), None, "max_json_depth")
        for d in (1000, 5000)
    },
}


def _gzip_named(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="content.json", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def _content_cases() -> dict[str, Content]:
    cases: dict[str, Content] = {}
    for name, (text, key, dead) in JSON_CASES.items():
        cases[f"str:{name}"] = Content(W(1, text), text, key, dead)
        cases[f"gzip:{name}"] = Content(W(7, gzip.compress(text, 1)), text, key, dead)
    canonical = CANONICAL
    gz = gzip.compress(canonical)
    bad_crc, bad_size = bytearray(gz), bytearray(gz)
    bad_crc[-8] ^= 1
    bad_size[-1] ^= 1
    at_limit = b'{"tid":9,"s":"' + b"x" * (LIMIT - 16) + b'"}'
    assert len(at_limit) == LIMIT
    refused = {
        # Small compressed, large inflated: refused before more than the limit is inflated.
        "bomb_10mb": gzip.compress(bytes(10 * 2**20), 9),
        "bomb_limit_plus_1": gzip.compress(bytes(LIMIT + 1), 9),
        "gzip_truncated_half": gz[: len(gz) // 2],
        "gzip_truncated_trailer": gz[:-1],
        "gzip_header_only": gz[:10],
        "gzip_bad_crc": bytes(bad_crc),
        "gzip_bad_size": bytes(bad_size),
        "zlib_not_gzip": zlib.compress(canonical),
        "not_gzip": b"not gzip",
        "empty_bytearray": b"",
    }
    for name, data in refused.items():
        cases[f"ba:{name}"] = Content(W(7, data), None)
    accepted = {
        "gzip_at_limit": (gzip.compress(at_limit, 9), at_limit, b"9"),
        "gzip_two_members": (
            gzip.compress(b'{"tid":11,') + gzip.compress(b'"x":1}'),
            b'{"tid":11,"x":1}',
            b"11",
        ),
        "gzip_with_filename": (_gzip_named(canonical), canonical, b"4123456789012345678"),
        "gzip_empty_member": (gzip.compress(b""), b"", None),
    }
    for name, (data, inflated, key) in accepted.items():
        cases[f"ba:{name}"] = Content(W(7, data), inflated, key, None if key else "not JSON")
    trailing = {"gzip_trailing_garbage": gz + b"junk", "gzip_zero_padding": gz + bytes(8)}
    for name, data in trailing.items():
        cases[f"ba:{name}"] = Content(W(7, data), canonical, sure=False)
    return cases


CONTENT_CASES = _content_cases()
#: Content values by wire form: the expectation follows the value, wherever it came from.
CONTENT_BY_WIRE = {(c.w.fmt, c.w.data): c for c in CONTENT_CASES.values()}
DYNAMIC_CONTENT: dict[str, Case] = {
    "absent": lambda src: None,
    "void": lambda src: W(0),
    "text": lambda src: s(src.text(60)),
    "raw_bytes": lambda src: W(1, src.blob(40)),
    "int": fixed_width,
    "random_bytearray": lambda src: W(7, b"x" + src.blob(40)),
}


def content_case(name: str) -> Case:
    if name in DYNAMIC_CONTENT:
        return DYNAMIC_CONTENT[name]
    w = CONTENT_CASES[name].w
    return lambda src: w


CONTENT_NAMES = names(DYNAMIC_CONTENT, CONTENT_CASES, **{"str:canonical": 8, "gzip:canonical": 3})


# ----------------------------------------------------------------------------- push grammar


@dataclass(frozen=True)
class PushSpec:
    """A frame from the server, field by field: the name of each field's case."""

    mtype: int
    token: str
    kind: str
    id: str
    topic: str
    content: str
    time: str
    userid: str
    dataid: str
    data_id: str
    nick: str
    publisher: str
    retried: str
    damage: str
    blob: bytes


OPTIONAL_INT = names(INT_CASES, absent=8, int64=2)
OPTIONAL_TEXT = names(TEXT_CASES, absent=3, text=3)
push_specs = st.builds(
    PushSpec,
    mtype=st.sampled_from([SEND] * 12 + [SENDACK, CONNECT, CONNECTACK]),
    token=names(ours=12, foreign=1, absent=1, empty=1, bad_utf8=1),
    kind=names(KIND_CASES, data=12),
    id=names(INT_CASES, int64=10, str_digits=3),
    topic=names(TEXT_CASES, trade=8, unkeyed=4, refund=1, item=2),
    content=CONTENT_NAMES,
    time=names(TIME_CASES, absent=4, date_ok=6),
    userid=OPTIONAL_INT,
    dataid=OPTIONAL_INT,
    data_id=OPTIONAL_INT,
    nick=OPTIONAL_TEXT,
    publisher=OPTIONAL_TEXT,
    retried=OPTIONAL_INT,
    damage=DAMAGE,
    blob=st.binary(max_size=200),
)


def build_push(spec: PushSpec) -> Built:
    src = Src(spec.blob)
    headers: list[H] = []
    raw_token = TOKEN_CASES[spec.token](src)
    if raw_token is not None:
        headers.append(token_header(raw_token))
    fields: list[tuple[str, Case]] = [
        ("__kind", KIND_CASES[spec.kind]),
        ("id", INT_CASES[spec.id]),
        ("topic", TOPIC_CASES[spec.topic]),
        ("content", content_case(spec.content)),
        ("time", TIME_CASES[spec.time]),
        ("userid", INT_CASES[spec.userid]),
        ("dataid", INT_CASES[spec.dataid]),
        ("data_id", INT_CASES[spec.data_id]),
        ("nick", TEXT_CASES[spec.nick]),
        ("publisher", TEXT_CASES[spec.publisher]),
        ("retried", INT_CASES[spec.retried]),
    ]
    for key, case in fields:
        w = case(src)
        if w is not None:
            headers.append(custom(key, w))
    while src.chance(4):
        headers.append(extra_header(src))
    while src.chance(6):  # the same key twice: the last one counts
        key = src.pick([k for k, _ in fields])
        headers.append(custom(key, any_value(src)))
    return assemble(spec.mtype, headers, src, spec.damage)


# ----------------------------------------------------------------------------- client model


class Bad(Exception):
    """A field value the bridge must refuse."""


def int_model(w: W | None) -> int | None:
    if w is None or w.fmt == 0:
        return None
    if isinstance(w.data, int):
        return w.data
    if w.fmt == 1:
        assert isinstance(w.data, bytes)
        text = w.data.decode("utf-8", "replace")
        # Leading zeros do not count against the 19 digits.
        if re.fullmatch("0*[0-9]{1,19}", text) and int(text) <= INT64_MAX:
            return int(text)
    raise Bad


def text_model(w: W | None) -> str | None:
    if w is None or w.fmt == 0:
        return None
    if isinstance(w.data, int):
        return str(w.data)
    if w.fmt == 1:
        assert isinstance(w.data, bytes)
        return w.data.decode("utf-8", "replace")
    raise Bad


def plain_value(w: W | None) -> object:
    """What Frame.get gives for a non-content key."""
    if w is None or w.fmt == 0:
        return None
    if w.fmt == 1 and isinstance(w.data, bytes):
        return w.data.decode("utf-8", "replace")
    return w.data


@dataclass
class Expect:
    outcome: str
    fields: dict[str, object] | None = None
    #: Text the malformed reason contains (the first problem); None: not malformed.
    problem: str | None = None
    retried: int | None = None
    content: Content | None = None
    sure: bool = True


def expect_client(d: Decoded | None) -> Expect:
    """The event a logged-in ClientSession must return for a decoded frame."""
    if d is None:
        return Expect("FrameError")
    if d.mtype in (CONNECT, CONNECTACK):
        return Expect("ProtocolError")
    if d.mtype == SENDACK or d.token != TOKEN:
        return Expect("Ignored")
    kind = plain_value(d.custom.get("__kind"))
    if not ((isinstance(kind, int) and kind == 3) or (kind is None and "topic" in d.custom)):
        return Expect("Ignored")
    try:
        message_id = int_model(d.custom.get("id"))
    except Bad:
        return Expect("Rejected")
    if message_id is None:
        return Expect("Rejected")
    problems: list[str] = []

    def read(model: Callable[[W | None], Any], key: str) -> Any:
        try:
            return model(d.custom.get(key))
        except Bad:
            problems.append(f"'{key}'")
            return None

    topic = read(text_model, "topic")
    if not topic:
        problems.append("without a topic")
        topic = "unknown"
    w = d.custom.get("content")
    case: Content | None = None
    sure = True
    if w is None or w.fmt == 0:
        content = b""
    elif w.fmt == 1:
        assert isinstance(w.data, bytes)
        content = w.data
        case = CONTENT_BY_WIRE.get((1, w.data))
    elif w.fmt == 7:
        assert isinstance(w.data, bytes)
        case = CONTENT_BY_WIRE.get((7, w.data))
        content = w.data  # random bytes: not gzip
        if case is not None:
            sure = case.sure
            content = w.data if case.inflated is None else case.inflated
        if case is None or case.inflated is None:
            problems.append("content")
    else:
        content = b""
        problems.append("content")
    publish_time = read(int_model, "time")
    if publish_time is not None and not 0 <= publish_time <= MAX_TIME_MS:
        problems.append("'time'")
        publish_time = None
    data_id = read(int_model, "dataid")
    if data_id is None:
        data_id = read(int_model, "data_id")
    fields = {
        "message_id": message_id,
        "topic": topic,
        "content": content,
        "publish_time_ms": publish_time,
        "data_id": data_id,
        "user_id": read(int_model, "userid"),
        "publisher": read(text_model, "publisher"),
        "nick": read(text_model, "nick"),
    }
    try:
        retried = int_model(d.custom.get("retried"))
    except Bad:
        retried = None
    if not sure:
        del fields["content"]
    problem = problems[0] if problems else None
    return Expect("Push", fields, problem, retried, case, sure)


# ----------------------------------------------------------------------------- checks

CONFIG = RoutingConfig()
DLQ = CONFIG.dead_letter_topic
ROUTER = Router(CONFIG)
ENVELOPE = Router(CONFIG, envelope=True)
KEY_TEXT = re.compile(rb"-?[0-9]{1,40}")


def key_fields(topic: str) -> list[str] | None:
    for pattern, fields in CONFIG.keys.items():
        if fnmatch.fnmatchcase(topic, pattern):
            return fields
    return None


def check_record(record: OutRecord, msg: SourceMessage, *, envelope: bool) -> None:
    """What every record of the router must satisfy, whatever the message held."""
    assert isinstance(record, OutRecord)
    assert isinstance(record.value, bytes) and isinstance(record.topic, str)
    assert record.key is None or (
        isinstance(record.key, bytes) and KEY_TEXT.fullmatch(record.key)
    ), record.key
    for name, value in record.headers:
        assert isinstance(name, str) and isinstance(value, bytes), (name, value)
    headers = dict(record.headers)
    assert headers["tmc.message_id"] == str(msg.message_id).encode()
    if msg.malformed:
        assert record.dead_letter_reason == msg.malformed
    if record.dead_letter_reason is not None:
        assert record.topic == DLQ
        limit = CONFIG.dead_letter_max_value_bytes
        assert record.value == msg.content[:limit]
        assert (H_DLQ_TRUNCATED in headers) == (len(msg.content) > limit)
        return
    assert record.topic == "tmc.messages"
    keyed = key_fields(msg.topic) is not None
    assert (record.key is not None) == keyed, (msg.topic, record.key)
    if not envelope:
        assert record.value == msg.content  # forwarded byte for byte
        return
    doc = json.loads(record.value)
    assert doc["id"] == str(msg.message_id) and doc["topic"] == msg.topic
    assert doc["content"] == msg.content.decode("utf-8")


def route_both(msg: SourceMessage) -> tuple[OutRecord, OutRecord]:
    plain = ROUTER.route(msg)
    check_record(plain, msg, envelope=False)
    wrapped = ENVELOPE.route(msg)
    check_record(wrapped, msg, envelope=True)
    return plain, wrapped


def check_push(prop: str, session: tmc_session.ClientSession, push: tmc_session.Push) -> None:
    """The contract of every Push, whatever the frame held."""
    msg = push.message
    assert isinstance(msg.message_id, int) and not isinstance(msg.message_id, bool)
    assert INT64_MIN <= msg.message_id <= INT64_MAX
    assert msg.publish_time_ms is None or 0 <= msg.publish_time_ms <= MAX_TIME_MS
    for value in (msg.user_id, msg.data_id, push.retried):
        assert value is None or INT64_MIN <= value <= INT64_MAX
    assert isinstance(msg.content, bytes) and isinstance(msg.topic, str) and msg.topic
    assert msg.malformed is None or (isinstance(msg.malformed, str) and msg.malformed)
    # Confirmable: both answers encode, and the server reads back the same id.
    server = online_server(strict=True)
    assert server.receive(session.confirm(msg.message_id)) == tmc_server.Confirm(msg.message_id)
    reason = msg.malformed or "sink unavailable: broker down"
    failed = server.receive(session.fail(msg.message_id, reason))
    assert failed == tmc_server.Failed(msg.message_id, reason[: tmc_session.FAILED_MSG_MAX])
    plain, _ = route_both(msg)
    saw(prop, "malformed" if msg.malformed else "clean")
    if plain.dead_letter_reason is not None:
        saw(prop, "dead_letter")
        for hostile in ("max_content_bytes", "max_json_depth", "not valid UTF-8", "not JSON"):
            if hostile in plain.dead_letter_reason:
                saw(prop, hostile)


def check_expected(prop: str, push: tmc_session.Push, exp: Expect) -> None:
    """The Push against the model of the frame it came from."""
    msg = push.message
    assert exp.fields is not None
    got = {k: getattr(msg, k) for k in exp.fields}
    assert got == exp.fields
    assert push.retried == exp.retried
    if exp.sure:
        if exp.problem is None:
            assert msg.malformed is None
        else:
            assert msg.malformed is not None and exp.problem in msg.malformed, msg.malformed
    case = exp.content
    if msg.malformed or case is None or key_fields(msg.topic) is None:
        return
    plain = ROUTER.route(msg)
    if key_fields(msg.topic) != ["num_iid"] and (case.key is not None or case.dead is not None):
        saw(prop, "keyed_with_oracle")
        if case.key is not None:
            assert plain.dead_letter_reason is None and plain.key == case.key, plain
        else:
            assert case.dead is not None
            assert plain.dead_letter_reason is not None and case.dead in plain.dead_letter_reason
    elif key_fields(msg.topic) == ["num_iid"]:
        assert plain.dead_letter_reason is not None  # no content here has a num_iid


def online_server(*, strict: bool) -> tmc_server.ServerSession:
    server = tmc_server.ServerSession({"12345678": SECRET}, strict=strict)
    request = server.receive(bytes.fromhex(CONNECT_71))
    assert isinstance(request, tmc_server.ConnectRequest)
    server.accept(request, TOKEN)
    return server


def receive(
    prop: str, session: tmc_session.ClientSession, data: bytes
) -> tmc_session.ClientEvent | TmcError:
    """session.receive under the contract: an event, or only a TmcError."""
    try:
        result: tmc_session.ClientEvent | TmcError = session.receive(data, received_ns=1)
    except TmcError as exc:
        result = exc
    saw(prop, type(result).__name__)
    assert isinstance(
        result,
        tmc_session.LoggedIn
        | tmc_session.Push
        | tmc_session.Ignored
        | tmc_session.Rejected
        | TmcError,
    ), result
    if isinstance(result, tmc_session.Rejected):
        assert isinstance(result.reason, str) and result.reason
        assert result.message_id is None or len(result.message_id) <= 40
    if isinstance(result, tmc_session.Push):
        check_push(prop, session, result)
    return result


# ----------------------------------------------------------------------------- vectors


def _ours(raw: bytes) -> bytes:
    frame = codec.decode(raw, raw_strings=frozenset({"content"}))
    frame.token = TOKEN
    return codec.encode(frame)


def _push(content: str | bytes, **kw: Any) -> bytes:
    server = online_server(strict=False)
    fields = {
        "publish_time_ms": 1700000000123,
        "out_time_ms": 1700000000456,
        "publisher": "12497914",
        "user_id": 2200000001,
        "nick": "demo_shop",
        "data_id": 4123456789012345678,
        **kw,
    }
    return server.push(
        tmc_server.push_body(2200000000123456789, "taobao_trade_X", content, **fields)
    )


ALL_FORMATS = codec.encode(
    Frame(
        MessageType.SEND,
        status_code=5,
        status_phrase="phrase",
        flag=7,
        token=TOKEN,
        custom={
            "__kind": codec.byte(3),
            "id": Value(Fmt.INT32, 77),
            "topic": codec.string("taobao_trade_TradeCreate"),
            "content": Value(Fmt.BYTE_ARRAY, gzip.compress(b'{"tid":1}')),
            "void": Value(Fmt.VOID, None),
            "int16": Value(Fmt.INT16, -2),
            "time": codec.date_ms(1),
            "userid": codec.int64(-1),
        },
    )
)
T = codec.string("taobao_trade_TradeCreate")
#: What the server sends: spec vectors, the 2014 captures (with our token) and pushes.
SERVER_VECTORS = [
    PUSH_73,
    CONNECTACK_72,
    FAILED_ACK_76,
    ALL_FORMATS,
    *(_ours(bytes.fromhex(str(c["hex"]))) for c in captures()),
    _push(gzip.compress(CANONICAL), retried=3),
    _push(b'{"tid":1,"s":"\xff"}'),
    _push(f'{{"tid":1,"a":{_nest(100)}}}'),
    _ours(codec.encode(Frame(MessageType.SEND, custom={"id": codec.string("123"), "topic": T}))),
    _ours(codec.encode(Frame(MessageType.SEND, custom={"__kind": codec.byte(3), "topic": T}))),
]
#: What the client sends.
CLIENT_VECTORS = [bytes.fromhex(v) for v in (CONNECT_71, CONFIRM_74, PULL_75, FAILED_76)]
ALL_VECTORS = SERVER_VECTORS + CLIENT_VECTORS
INTERESTING_I32 = [0, 1, -1, 2, 4, 0x7F, 0xFF, 0x7FFF, 0x8000, 0x7FFFFFFF, -(2**31), 36, 100_000]


def mutate(data: bytes, src: Src) -> bytes:
    """1-4 mutations: bit flips, bytes and length fields overwritten, ranges inserted,
    deleted, truncated, duplicated or spliced in from another vector."""
    buf = bytearray(data)
    for _ in range(1 + src.below(4)):
        op = src.below(9)
        n = len(buf)
        pos = src.below(n + 1)
        if op == 0 and n:
            buf[min(pos, n - 1)] ^= 1 << src.below(8)
        elif op == 1 and n:
            buf[min(pos, n - 1)] = src.pick([0, 1, 2, 3, 5, 7, 8, 0x7F, 0x80, 0xFF, src.uint(1)])
        elif op == 2:
            value = src.pick([*INTERESTING_I32, n, n - pos, n - pos - 4, n - pos - 3])
            buf[pos : pos + 4] = I32.pack(max(-(2**31), min(value, 2**31 - 1)))
        elif op == 3:
            buf[pos : pos + 2] = I16.pack(src.pick([-1, 0, 1, 2, 3, 4, 5, 6, 0x7FFF, -32768]))
        elif op == 4:
            buf[pos:pos] = src.blob(16)
        elif op == 5:
            del buf[pos : pos + 1 + src.below(16)]
        elif op == 6:
            del buf[pos:]
        elif op == 7:
            start = src.below(n + 1)
            buf[pos:pos] = buf[start : start + 1 + src.below(64)]
        elif op == 8:
            donor = src.pick(ALL_VECTORS)
            start = src.below(len(donor) + 1)
            buf[pos:pos] = donor[start : start + 1 + src.below(64)]
    return bytes(buf)


HEADS = [b"", b"\x02\x00", b"\x02\x01", b"\x02\x02", b"\x02\x03", b"\x02\x02\x01\x00"]
HEADS += [b"\x02\x02\x04\x00", b"\x02\x01\x00\x00"]  # a flag header; a complete frame
#: Arbitrary bytes, or arbitrary bytes after the start of a frame.
raw_bytes = st.builds(
    lambda head, tail: head + tail, st.sampled_from(HEADS), st.binary(max_size=400)
)


# ----------------------------------------------------------------------------- codec

RAW = frozenset({"content"})


def normal(frame: Frame) -> Frame:
    """The writer omits empty headers, so "" and None read back alike."""
    frame.token = frame.token or None
    frame.status_phrase = frame.status_phrase or None
    return frame


def check_fast_reader(data: bytes, errors: str, raw_strings: frozenset[str]) -> None:
    """Whatever the fast header reader accepts, the careful one reads the same way."""
    try:
        fast, careful = codec._start(data), codec._start(data)
    except FrameError:
        return
    if not codec._read_headers_fast(fast, data, errors, raw_strings):
        return
    codec._read_headers(careful, data, errors, raw_strings)  # must not raise
    assert fast == careful


def check_codec(prop: str, data: bytes) -> None:
    check_fast_reader(data, "replace", frozenset())
    check_fast_reader(data, "strict", RAW)
    try:
        frame: Frame | None = codec.decode(data)
    except FrameError:
        frame = None
    saw(prop, "FrameError" if frame is None else "Frame")
    try:
        raw_frame: Frame | None = codec.decode(data, raw_strings=RAW)
    except FrameError:
        raw_frame = None
    assert (raw_frame is None) == (frame is None)
    try:
        strict: Frame | None = codec.decode(data, strict_utf8=True)
    except FrameError:
        strict = None
    assert strict is None or strict == frame
    startable = len(data) >= 4 and data[0] == 2 and data[1] <= 3
    try:
        head: Frame | None = codec.decode_head(data)
    except FrameError:
        head = None
    assert (head is not None) == startable  # decode_head refuses only a bad start
    if frame is None:
        return
    assert head == frame
    again = codec.decode(codec.encode(frame))
    assert normal(again) == normal(frame)
    assert raw_frame is not None
    assert codec.decode(codec.encode(raw_frame), raw_strings=RAW) == normal(raw_frame)


def test_fuzz_codec_random_bytes(fuzz_report: FuzzReport) -> None:
    @fuzz_settings("codec_bytes")
    @given(raw_bytes)
    def prop(data: bytes) -> None:
        with one_input("codec_bytes"):
            check_codec("codec_bytes", data)

    run_property("codec_bytes", prop, fuzz_report, needs=["Frame", "FrameError"])


def test_fuzz_codec_mutated_vectors(fuzz_report: FuzzReport) -> None:
    @fuzz_settings("codec_mutations")
    @given(st.sampled_from(ALL_VECTORS), st.binary(max_size=64))
    def prop(vector: bytes, blob: bytes) -> None:
        with one_input("codec_mutations"):
            check_codec("codec_mutations", mutate(vector, Src(blob)))

    run_property("codec_mutations", prop, fuzz_report, needs=["Frame", "FrameError"])


def _values() -> st.SearchStrategy[Value]:
    ints = [
        st.builds(Value, st.just(f), st.integers(*INT_RANGE[int(f)]))
        for f in (Fmt.BYTE, Fmt.INT16, Fmt.INT32, Fmt.INT64, Fmt.DATE)
    ]
    return st.one_of(
        st.just(Value(Fmt.VOID, None)),
        st.builds(Value, st.just(Fmt.STRING), st.text(max_size=20)),
        st.builds(Value, st.just(Fmt.BYTE_ARRAY), st.binary(max_size=20)),
        *ints,
    )


frames = st.builds(
    Frame,
    type=st.sampled_from(MessageType),
    status_code=st.integers(*INT_RANGE[4]),
    status_phrase=st.none() | st.text(min_size=1, max_size=12),
    flag=st.integers(*INT_RANGE[4]),
    token=st.none() | st.text(min_size=1, max_size=40),
    custom=st.dictionaries(
        st.sampled_from(["content", "id", "topic", "__kind", ""]) | st.text(max_size=12),
        _values(),
        max_size=6,
    ),
)


def test_fuzz_codec_round_trip(fuzz_report: FuzzReport) -> None:
    @fuzz_settings("codec_roundtrip")
    @given(frames)
    def prop(frame: Frame) -> None:
        with one_input("codec_roundtrip"):
            raw = codec.encode(frame)
            assert codec.decode(raw) == frame
            assert codec.decode(raw, strict_utf8=True) == frame
            assert codec.decode_head(raw) == frame
            assert codec.encode(codec.decode(raw)) == raw
            content = frame.custom.get("content")
            if content is not None and content.fmt is Fmt.STRING:
                raw_content = codec.decode(raw, raw_strings=RAW).custom["content"]
                assert raw_content == Value(Fmt.STRING, str(content.data).encode())
                saw("codec_roundtrip", "raw content")
            if len(frame.custom) >= 4:
                saw("codec_roundtrip", "4+ custom")

    run_property("codec_roundtrip", prop, fuzz_report, needs=["raw content", "4+ custom"])


# ----------------------------------------------------------------------------- client


def test_fuzz_client_bytes_and_mutations(fuzz_report: FuzzReport) -> None:
    """Any bytes, in any session state: logged in, awaiting CONNECTACK, never connected."""
    prop_name = "client_bytes"

    setups = [("online", "mutation")] * 9 + [("online", "random")] * 3
    setups += [
        ("await_connectack", "mutation"),
        ("await_connectack", "random"),
        ("idle", "mutation"),
    ]

    @fuzz_settings(prop_name)
    @given(st.sampled_from(setups), st.binary(max_size=400))
    def prop(setup: tuple[str, str], blob: bytes) -> None:
        state, how = setup
        src = Src(blob)
        if how == "random":
            data = src.pick(HEADS) + blob[1:]
        else:
            connectack = state == "await_connectack"
            vector = src.pick([CONNECTACK_72, FAILED_ACK_76] if connectack else SERVER_VECTORS)
            data = mutate(vector, src)
        with one_input(prop_name):
            session = tmc_session.ClientSession("12345678", SECRET, "default")
            if state == "online":
                session = online_session()
            elif state == "await_connectack":
                session.connect(1)
            result = receive(prop_name, session, data)
            if state == "idle":
                assert isinstance(result, FrameError | ProtocolError)
            elif isinstance(result, tmc_session.LoggedIn):
                assert state == "await_connectack" and result.token
                assert session.state is tmc_session.State.ONLINE
                assert codec.decode(session.confirm(1)).token == result.token
            elif state == "online":
                # Nothing a frame holds logs the session out.
                assert session.state is tmc_session.State.ONLINE and session.token == TOKEN

    run_property(
        prop_name,
        prop,
        fuzz_report,
        needs=["clean", "malformed", "Rejected", "Ignored", "FrameError", "LoggedIn", "LoginError"],
    )


def check_fast_push(raw: bytes) -> None:
    """The fast push reader gives what the field-by-field one gives, or steps aside."""
    try:
        frame = codec.decode(raw, raw_strings=RAW)
    except FrameError:
        return
    fast = tmc_session._push_fast(frame, 7)
    if fast is not None:
        saw("client_grammar", "fast push")
        assert fast == tmc_session._push_from(frame, 7, tmc_session.DEFAULT_MAX_CONTENT_BYTES)


def test_fuzz_client_grammar_frames(fuzz_report: FuzzReport) -> None:
    """Well-formed frames with hostile values, checked against the model of each field."""
    prop_name = "client_grammar"
    session = online_session()

    @fuzz_settings(prop_name)
    @given(push_specs)
    def prop(spec: PushSpec) -> None:
        built = build_push(spec)
        expect = expect_client(model_decode(built))
        with one_input(prop_name):
            result = receive(prop_name, session, built.raw)
            assert type(result).__name__ == expect.outcome, (result, expect)
            check_fast_push(built.raw)
            if isinstance(result, tmc_session.Push):
                check_expected(prop_name, result, expect)
            assert session.state is tmc_session.State.ONLINE and session.token == TOKEN

    run_property(
        prop_name,
        prop,
        fuzz_report,
        needs=[
            "clean",
            "malformed",
            "Rejected",
            "Ignored",
            "FrameError",
            "ProtocolError",
            "dead_letter",
            "keyed_with_oracle",
            "fast push",
            # the hostile contents reached the router
            "max_content_bytes",
            "max_json_depth",
            "not valid UTF-8",
            "not JSON",
        ],
    )


def test_fuzz_client_oversized_frames(fuzz_report: FuzzReport) -> None:
    """The first bytes of a frame too large to read: a malformed Push, or Rejected."""
    prop_name = "client_oversized"
    session = online_session()

    @fuzz_settings(prop_name)
    @given(push_specs, st.integers(0, 2**16), st.integers(1, 2**40))
    def prop(spec: PushSpec, cut: int, over: int) -> None:
        built = build_push(spec)
        cut = min(cut, len(built.raw))
        head = built.raw[:cut]
        size = len(built.raw) + over
        limit = max(0, size - over)
        reason = f"frame of {size} bytes is over source.tmc.max_frame_bytes ({limit})"
        decoded = model_decode(built, upto=cut)
        if decoded is not None:
            decoded.custom.pop("content", None)
        expect = expect_client(decoded)
        with one_input(prop_name):
            try:
                result = session.receive_oversized(head, size, limit, received_ns=1)
            except TmcError as exc:
                assert isinstance(exc, ProtocolError) and expect.outcome == "ProtocolError"
                saw(prop_name, "ProtocolError")
                return
            saw(prop_name, type(result).__name__)
            if expect.outcome == "FrameError":  # not even version and type
                assert isinstance(result, tmc_session.Rejected) and reason in result.reason
            elif expect.outcome == "Rejected":
                assert isinstance(result, tmc_session.Rejected) and result.reason.startswith(reason)
            elif expect.outcome == "Ignored":
                assert isinstance(result, tmc_session.Ignored)
            else:
                assert isinstance(result, tmc_session.Push), result
                msg = result.message
                assert msg.malformed is not None and msg.malformed.startswith(reason)
                assert msg.content == b""
                assert expect.fields is not None
                expect.fields["content"] = b""
                assert {k: getattr(msg, k) for k in expect.fields} == expect.fields
                check_push(prop_name, session, result)
                assert ROUTER.route(msg).topic == DLQ

    run_property(prop_name, prop, fuzz_report, needs=["malformed", "Rejected", "Ignored"])


# ----------------------------------------------------------------------------- server

CONNECT_KEYS = ["app_key", "group_name", "timestamp", "sign", "sdk"]
SEND_KEYS = ["__kind", "id", "msg", "topic", "content"]
SERVER_CASES: dict[str, Case] = {
    **{f"int.{n}": c for n, c in INT_CASES.items()},
    **{f"text.{n}": c for n, c in TEXT_CASES.items()},
    "known_app_key": lambda src: s("12345678"),
    "hex_sign": lambda src: s(src.pick(["8A25D19D03C04B2896272784405F9CDF", "0" * 32, "a" * 32])),
    "non_ascii": lambda src: s(src.pick(["é" * 32, "中文", "８" * 32, "ß", "\u212a"])),
    "kind": lambda src: W(src.pick([2, 2, 3, 4, 5]), src.pick([1, 2, 3, 20, 0, -1])),
    "kind_text": lambda src: s(src.pick(["1", "2", " 20", "x", "²", "٣", "2" * 5000, ""])),
}


@dataclass(frozen=True)
class ClientFrameSpec:
    mtype: int
    token: str
    fields: tuple[tuple[str, str], ...]
    damage: str
    blob: bytes


def _any(**weights: int) -> st.SearchStrategy[str]:
    return names(SERVER_CASES, **weights)


SERVER_FIELD = {
    "app_key": _any(known_app_key=30),
    "group_name": _any(**{"text.text": 20}),
    "timestamp": _any(**{"int.str_digits": 20}),
    "sign": _any(hex_sign=15, non_ascii=15),
    "sdk": _any(**{"text.absent": 20}),
    "__kind": _any(kind=20, kind_text=10),
    "id": _any(**{"int.int64": 20}),
    "msg": _any(**{"text.text": 10}),
    "topic": _any(**{"text.absent": 20}),
    "content": _any(**{"text.absent": 20}),
}
client_frame_specs = st.builds(
    ClientFrameSpec,
    mtype=st.sampled_from([CONNECT] * 4 + [SEND] * 6 + [SENDACK, CONNECTACK]),
    token=names(ours=6, foreign=1, absent=3, empty=1, bad_utf8=1),
    fields=st.tuples(*(st.tuples(st.just(k), SERVER_FIELD[k]) for k in SERVER_FIELD)),
    damage=DAMAGE,
    blob=st.binary(max_size=100),
)


def build_client_frame(spec: ClientFrameSpec) -> Built:
    src = Src(spec.blob)
    headers: list[H] = []
    token = TOKEN_CASES[spec.token](src)
    if token is not None:
        headers.append(token_header(token))
    wanted = CONNECT_KEYS if spec.mtype == CONNECT else SEND_KEYS
    for key, case in spec.fields:
        w = SERVER_CASES[case](src)
        if w is not None and (key in wanted or src.chance(8)):
            headers.append(custom(key, w))
    while src.chance(4):
        headers.append(extra_header(src))
    return assemble(spec.mtype, headers, src, spec.damage)


SERVER_EVENTS = (
    tmc_server.ConnectRequest,
    tmc_server.PullRequest,
    tmc_server.Confirm,
    tmc_server.Failed,
    tmc_server.Publish,
)


def test_fuzz_server_session(fuzz_report: FuzzReport) -> None:
    """The simulator's server side: any client bytes, strict and lenient, before and
    after CONNECT."""
    prop_name = "server"

    # One of each event the property must see, whatever the seed: the random draws alone
    # reach a rare one (a client's publish, kind 3) only in some runs. A 1-tuple holds
    # bytes to send exactly as they are.
    def send(**custom: Value) -> tuple[bytes]:
        return (codec.encode(Frame(MessageType.SEND, token=TOKEN, custom=custom)),)

    publish = send(__kind=codec.byte(3), topic=codec.string("t"), content=codec.string("{}"))
    confirm = send(__kind=codec.byte(2), id=codec.int64(7))
    failed = send(__kind=codec.byte(20), id=codec.int64(7), msg=codec.string("x"))
    pull = send(__kind=codec.byte(1))

    @fuzz_settings(prop_name)
    @given(
        st.sampled_from([(s, o) for s in (True, False) for o in (True, False)]),
        st.one_of(client_frame_specs, st.binary(max_size=400)),
    )
    @example((True, True), publish)
    @example((True, True), confirm)
    @example((True, True), failed)
    @example((True, True), pull)
    @example((True, False), (bytes.fromhex(CONNECT_71),))
    @example((True, False), (b"\x02",))
    def prop(mode: tuple[bool, bool], spec: ClientFrameSpec | bytes | tuple[bytes]) -> None:
        strict, online = mode
        if isinstance(spec, tuple):
            data = spec[0]
        elif isinstance(spec, ClientFrameSpec):
            data = build_client_frame(spec).raw
        else:  # two in three: a mutated client vector; else the bytes as they are
            src = Src(spec)
            data = spec if src.chance(3) else mutate(src.pick(CLIENT_VECTORS), src)
        with one_input(prop_name):
            if online:
                server = online_server(strict=strict)
            else:
                server = tmc_server.ServerSession({"12345678": SECRET}, strict=strict)
            try:
                result: object = server.receive(data)
            except TmcError as exc:
                result = exc
            saw(prop_name, type(result).__name__)
            assert isinstance(result, (*SERVER_EVENTS, TmcError)), result
            if isinstance(result, tmc_server.Confirm | tmc_server.Failed):
                assert INT64_MIN <= result.message_id <= INT64_MAX
            if isinstance(result, tmc_server.ConnectRequest) and result.sign_ok:
                saw(prop_name, "sign_ok")

    run_property(
        prop_name,
        prop,
        fuzz_report,
        needs=["ConnectRequest", "PullRequest", "Confirm", "Failed", "Publish", "FrameError"],
    )


# ----------------------------------------------------------------------------- ons

MISSING = object()


def ons_int_cases(limit: int) -> dict[str, Callable[[Src], object]]:
    return {
        "absent": lambda src: MISSING,
        "null": lambda src: None,
        "int": lambda src: src.uint(8) % (limit + 1),
        "edge": lambda src: src.pick([0, limit, limit + 1, -1, INT64_MAX, INT64_MAX + 1]),
        "huge": lambda src: src.pick([10**100, -(10**100), 10**4299]),
        "str": lambda src: src.pick(["", " ", "%d", " %d ", "\u3000%d"]).replace(
            "%d", str(src.uint(8) % (limit + 1))
        ),
        "str_bad": lambda src: src.pick(
            [*UNICODE_DIGITS, *BIG_NUMBERS, *NEGATIVE_NUMBERS, "1" * 5000, "1.0", "0x1"]
        ),
        "other": lambda src: src.pick([1.5, 7.0, float("inf"), True, False, [1], {"a": 1}]),
    }


def _deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


SHORT_JSON = [text for text, _, _ in JSON_CASES.values() if len(text) < 100]
ONS_TOPIC: dict[str, Callable[[Src], object]] = {
    "trade": lambda src: "taobao_trade_TradeCreate",
    "other": lambda src: src.pick(["taobao_item_ItemAdd", "x", "*"]),
    "text": lambda src: src.text(20),
    "lone_surrogate": lambda src: src.pick(["\ud800", "taobao_trade_\udfff"]),
    "absent": lambda src: MISSING,
    "bad": lambda src: src.pick(["", None, 5, ["t"], {"t": 1}]),
}
ONS_CONTENT: dict[str, Callable[[Src], object]] = {
    "json_text": lambda src: src.pick(SHORT_JSON).decode("utf-8", "replace"),
    "text": lambda src: src.text(40),
    "object": lambda src: {"tid": src.uint(8), "s": src.text(10), "n": [1, {"x": None}]},
    "list": lambda src: [src.text(5), 1],
    "deep": lambda src: _deep(src.pick([63, 64, 65, 300, 499, 500, 501, 600])),
    "lone_surrogate": lambda src: src.pick(["\ud800", {"a": "x\udc00"}]),
    "absent": lambda src: MISSING,
    "bad": lambda src: src.pick([None, 5, 1.5, True]),
}
ONS_ANY: dict[str, Callable[[Src], object]] = {
    "absent": lambda src: MISSING,
    "text": lambda src: src.text(20),
    "lone_surrogate": lambda src: "\ud800",
    "number": lambda src: src.pick([0, -1, 10**30, 1.5, float("nan")]),
    "other": lambda src: src.pick([None, True, [1, "a"], {"k": "v"}]),
    "deep": lambda src: _deep(src.pick([100, 499])),
}
ONS_BODIES = names(json=20, raw_bytes=1, not_object=1, deep_text=1, bad_utf8=1, huge_int=1)
ONS_KEYS = [
    "", "4123456789012345678", "1 2", "²", "9" * 30, " 12 ", str(INT64_MAX + 1), "ab cd",
    "\u300012", "12\u3000x", "-1",
]  # fmt: skip
ONS_MSG_IDS = ["0A1B2C3D" * 4, "", "zz", "٣", "0x1f", "1_0", "f" * 200, "-1", "C0A8" * 8]


@dataclass(frozen=True)
class OnsSpec:
    body: str
    topic: str
    content: str
    outgoing_id: str
    publish_time: str
    user_id: str
    user_nick: str
    publisher_appkey: str
    keys: str
    tags: str
    msg_id: str
    blob: bytes


ONS_INT_ID = ons_int_cases(INT64_MAX)
ONS_INT_TIME = ons_int_cases(MAX_TIME_MS)
ons_specs = st.builds(
    OnsSpec,
    body=ONS_BODIES,
    topic=names(ONS_TOPIC, trade=6),
    content=names(ONS_CONTENT, json_text=6),
    outgoing_id=names(ONS_INT_ID, int=6),
    publish_time=names(ONS_INT_TIME, int=4, absent=2),
    user_id=names(ONS_INT_ID, int=2, absent=4),
    user_nick=st.sampled_from(list(ONS_ANY)),
    publisher_appkey=st.sampled_from(list(ONS_ANY)),
    keys=st.sampled_from([*ONS_KEYS, "text"]),
    tags=st.sampled_from(["taobao_trade_TradeCreate", "", "*", "text"]),
    msg_id=st.sampled_from([*ONS_MSG_IDS, "text"]),
    blob=st.binary(max_size=100),
)


def ons_int_model(value: object, limit: int) -> int | None:
    if value is None or value is MISSING:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        result = value
    elif isinstance(value, str) and re.fullmatch("0*[0-9]{1,19}", value.strip()):
        result = int(value.strip())
    else:
        raise Bad
    if result > limit:
        raise Bad
    return result


def build_ons(spec: OnsSpec) -> tuple[InMessage, dict[str, object] | None]:
    """The message, and the fields it must map to (None: it must be malformed)."""
    src = Src(spec.blob)
    body_obj: dict[str, object] = {}
    for key, cases, case in (
        ("topic", ONS_TOPIC, spec.topic),
        ("content", ONS_CONTENT, spec.content),
        ("outgoing_id", ONS_INT_ID, spec.outgoing_id),
        ("publish_time", ONS_INT_TIME, spec.publish_time),
        ("user_id", ONS_INT_ID, spec.user_id),
        ("user_nick", ONS_ANY, spec.user_nick),
        ("publisher_appkey", ONS_ANY, spec.publisher_appkey),
    ):
        value = cases[case](src)
        if value is not MISSING:
            body_obj[key] = value
    order = list(body_obj)
    src.shuffle(order)
    body_obj = {k: body_obj[k] for k in order}
    text = json.dumps(body_obj, ensure_ascii=not src.chance(3))
    if src.chance(4) and body_obj:  # duplicated keys: the last one counts
        text = '{"topic": 1, "outgoing_id": "²", ' + text[1:]
        body_obj = {"topic": 1, "outgoing_id": "²", **body_obj}
    body = text.encode("utf-8", "surrogatepass")
    good = True
    if spec.body == "raw_bytes":
        body, good = b"{" + src.blob(60), False
    elif spec.body == "not_object":
        body, good = src.pick([b"[1,2]", b'"str"', b"null", b"1", b""]), False
    elif spec.body == "deep_text":
        depth = src.pick([499, 500, 501, 1000, 5000])
        body = b'{"topic":"t","content":"{}","x":' + _nest(depth).encode() + b"}"
        body_obj, good = {"topic": "t", "content": "{}"}, depth + 1 <= 501
    elif spec.body == "bad_utf8":
        body, good = body[:-1] + b',"s":"\xff"}' if len(body) > 2 else b'{"\xff":1}', False
    elif spec.body == "huge_int":
        body, good = b'{"topic":"t","content":"{}","n":' + b"9" * 5000 + b"}", False
    keys = src.text(12) if spec.keys == "text" else spec.keys
    msg = InMessage(
        topic="jushita_sync",
        tags=src.text(12) if spec.tags == "text" else spec.tags,
        keys=keys,
        body=body,
        msg_id=src.text(40) if spec.msg_id == "text" else spec.msg_id,
        queue_id=src.below(8),
        queue_offset=src.uint(8),
        reconsume_times=src.below(20),
        born_timestamp=src.uint(6),
        store_timestamp=src.uint(6),
        properties={},
    )
    first = keys.split()
    try:
        data_id = ons_int_model(first[0] if first else None, INT64_MAX)
    except Bad:
        data_id = None
    if not good:
        return msg, None
    return msg, ons_model(body, body_obj, data_id)


def _depth(value: object) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            v
            for x in level
            if isinstance(x, dict | list)
            for v in (x.values() if isinstance(x, dict) else x)
        ]
    return depth - 1


def ons_model(body: bytes, obj: dict[str, object], data_id: int | None) -> dict[str, object] | None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _depth(obj) > 501:
        return None
    topic, content = obj.get("topic"), obj.get("content")
    if not isinstance(topic, str) or not topic:
        return None
    if isinstance(content, dict | list):
        content = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    if not isinstance(content, str):
        return None
    try:
        topic.encode("utf-8")  # a topic with a lone surrogate is no text: dead letter
        raw = content.encode("utf-8")
        message_id = ons_int_model(obj.get("outgoing_id"), INT64_MAX)
        publish_time = ons_int_model(obj.get("publish_time"), MAX_TIME_MS)
        user_id = ons_int_model(obj.get("user_id"), INT64_MAX)
    except (Bad, UnicodeEncodeError):
        return None
    nick, publisher = obj.get("user_nick"), obj.get("publisher_appkey")
    fields: dict[str, object] = {
        "topic": topic,
        "content": raw,
        "publish_time_ms": publish_time,
        "user_id": user_id,
        "nick": nick if isinstance(nick, str) else None,
        "publisher": None if publisher is None else str(publisher)[:200],
        "data_id": data_id,
    }
    if message_id is not None:
        fields["message_id"] = message_id
    return fields


def check_ons(prop: str, msg: InMessage, expected: dict[str, object] | None) -> SourceMessage:
    out = ons.to_source_message(msg)
    assert isinstance(out, SourceMessage) and out.source == "ons"
    assert isinstance(out.message_id, int) and isinstance(out.content, bytes)
    assert out.publish_time_ms is None or 0 <= out.publish_time_ms <= MAX_TIME_MS
    assert out.user_id is None or 0 <= out.user_id <= INT64_MAX
    if expected is None:
        assert out.malformed, "must be dead-lettered"
    else:
        assert out.malformed is None
        assert {k: getattr(out, k) for k in expected} == expected
    if out.malformed:
        assert out.content == msg.body
    plain, _ = route_both(out)
    saw(prop, "malformed" if out.malformed else "mapped")
    if plain.dead_letter_reason is not None:
        saw(prop, "dead_letter")
    return out


def test_fuzz_ons_messages(fuzz_report: FuzzReport) -> None:
    prop_name = "ons"

    @fuzz_settings(prop_name)
    @given(ons_specs)
    def prop(spec: OnsSpec) -> None:
        msg, expected = build_ons(spec)
        with one_input(prop_name):
            out = check_ons(prop_name, msg, expected)
            if out.malformed and "'topic' holds a lone surrogate" in out.malformed:
                saw(prop_name, "lone surrogate topic")

    run_property(
        prop_name,
        prop,
        fuzz_report,
        needs=["malformed", "mapped", "dead_letter", "lone surrogate topic"],
    )


# ----------------------------------------------------------------------------- pipeline


class CountingAck:
    __slots__ = ("confirms", "fails")

    def __init__(self) -> None:
        self.confirms = self.fails = 0

    def alive(self) -> bool:
        return True

    def confirm(self) -> None:
        self.confirms += 1

    def fail(self, reason: str) -> None:
        self.fails += 1


#: Sources of messages for the pipeline: grammar pushes and ONS messages.
source_specs = st.lists(st.one_of(push_specs, ons_specs), min_size=1, max_size=6)


def messages_of(specs: list[PushSpec | OnsSpec], session: tmc_session.ClientSession) -> list[Any]:
    out: list[SourceMessage] = []
    for spec in specs:
        if isinstance(spec, OnsSpec):
            out.append(ons.to_source_message(build_ons(spec)[0]))
            continue
        try:
            event = session.receive(build_push(spec).raw)
        except TmcError:
            continue
        if isinstance(event, tmc_session.Push):
            out.append(event.message)
    return out


async def through_pipeline(messages: list[SourceMessage]) -> tuple[Pipeline, ScriptedSink]:
    sink = ScriptedSink()
    config = PipelineConfig(
        batch_max_messages=4, batch_linger_ms=0, retry_backoff_min_s=0.01, retry_backoff_max_s=0.02
    )
    pipeline = Pipeline(config, ROUTER, sink, metrics=Metrics())
    acks: list[CountingAck] = []
    try:
        for msg in messages:
            acks.append(CountingAck())
            await pipeline.submit(Delivery(msg, [acks[-1]]))
        pipeline.close()
        await asyncio.wait_for(pipeline.run(), 10)
    finally:
        await pipeline.shutdown()
    assert all((a.confirms, a.fails) == (1, 0) for a in acks)
    assert len(sink.committed) == len({(m.source, m.message_id) for m in messages})
    for record in sink.committed:
        reason = record.dead_letter_reason or ""
        assert not reason.startswith("bridge could not route"), reason
    return pipeline, sink


def test_fuzz_pipeline_submit(fuzz_report: FuzzReport) -> None:
    """Pipeline.submit never raises; everything is committed once and confirmed."""
    prop_name = "pipeline"
    session = online_session()

    with asyncio.Runner() as runner:

        @fuzz_settings(prop_name)
        @given(source_specs)
        def prop(specs: list[PushSpec | OnsSpec]) -> None:
            messages = messages_of(specs, session)
            with one_input(prop_name, len(messages)):
                _, sink = runner.run(through_pipeline(messages))
            for record in sink.committed:
                saw(prop_name, "dead_letter" if record.dead_letter_reason else "record")

        run_property(prop_name, prop, fuzz_report, needs=["dead_letter", "record"])


def test_fuzz_metrics_after_hostile_messages(fuzz_report: FuzzReport) -> None:
    """Whatever went through the pipeline, /metrics can still be rendered."""
    prop_name = "metrics"
    session = online_session()

    with asyncio.Runner() as runner:

        @fuzz_settings(prop_name)
        @given(source_specs)
        def prop(specs: list[PushSpec | OnsSpec]) -> None:
            messages = messages_of(specs, session)
            with one_input(prop_name):
                pipeline, _ = runner.run(through_pipeline(messages))
                text = generate_latest(pipeline.metrics.registry)
            assert b"tmc_bridge_source_received_messages_total" in text
            saw(prop_name, "rendered")

        run_property(prop_name, prop, fuzz_report, needs=["rendered"])
