"""TOP (Taobao Open Platform) request signing, shared by the simulator's gateway and clients.

Pure functions, no I/O. The algorithm, for every sign method:

1. take every request parameter except ``sign`` (system and API parameters alike) and drop
   those whose name or value is empty;
2. sort them by name in ascending byte order;
3. concatenate ``name1 value1 name2 value2 ...`` without separators;
4. digest the UTF-8 bytes: ``md5`` hashes ``secret + concatenation + secret``, ``hmac`` is
   HMAC-MD5 keyed with the secret, ``hmac-sha256`` is HMAC-SHA256 keyed with the secret;
5. render the digest as upper-case hex.

Timestamps are ``yyyy-MM-dd HH:mm:ss`` in China time (GMT+8, no daylight saving).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Literal, TypeGuard

SignMethod = Literal["md5", "hmac", "hmac-sha256"]
SIGN_METHODS: Final[tuple[SignMethod, ...]] = ("md5", "hmac", "hmac-sha256")

#: The gateway's time zone: GMT+8 all year.
CHINA_TZ: Final = timezone(timedelta(hours=8), "GMT+8")
TIMESTAMP_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
_TIMESTAMP_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", re.ASCII)

API_VERSION: Final = "2.0"


def is_sign_method(value: str) -> TypeGuard[SignMethod]:
    return value in SIGN_METHODS


def sign_base(params: Mapping[str, str]) -> str:
    """The sorted ``name value`` concatenation that is digested (``sign`` excluded)."""
    items = sorted(
        (name, value) for name, value in params.items() if name and value and name != "sign"
    )
    return "".join(name + value for name, value in items)


def sign(params: Mapping[str, str], secret: str, sign_method: SignMethod) -> str:
    """The ``sign`` parameter for ``params``, upper-case hex."""
    base = sign_base(params).encode("utf-8")
    key = secret.encode("utf-8")
    if sign_method == "md5":
        return hashlib.md5(key + base + key, usedforsecurity=False).hexdigest().upper()
    if sign_method == "hmac":
        return hmac.new(key, base, hashlib.md5).hexdigest().upper()
    if sign_method == "hmac-sha256":
        return hmac.new(key, base, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unknown sign_method {sign_method!r}")


def verify(params: Mapping[str, str], secret: str, sign_method: SignMethod, given: str) -> bool:
    """Whether ``given`` is the signature of ``params``: exact upper-case hex, compared in
    constant time."""
    expected = sign(params, secret, sign_method).encode("ascii")
    return hmac.compare_digest(expected, given.encode("utf-8", "surrogatepass"))


def format_timestamp(when: float | datetime | None = None) -> str:
    """``when`` (epoch seconds, an aware datetime, or now) as a gateway timestamp."""
    if when is None:
        when = time.time()
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("naive datetime: give a time zone")
        moment = when.astimezone(CHINA_TZ)
    else:
        moment = datetime.fromtimestamp(when, CHINA_TZ)
    return moment.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> float:
    """Epoch seconds of a gateway timestamp; ``ValueError`` if it is not exactly
    ``yyyy-MM-dd HH:mm:ss`` naming a real instant."""
    if not _TIMESTAMP_RE.fullmatch(text):
        raise ValueError(f"timestamp {text!r} is not yyyy-MM-dd HH:mm:ss")
    moment = datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=CHINA_TZ)
    return moment.astimezone(UTC).timestamp()


def signed_params(
    method: str,
    app_key: str,
    secret: str,
    api_params: Mapping[str, str] | None = None,
    *,
    sign_method: SignMethod = "md5",
    session: str | None = None,
    timestamp: float | datetime | str | None = None,
    partner_id: str | None = None,
) -> dict[str, str]:
    """Every parameter of one JSON call, ``sign`` included, ready to be form-encoded.

    ``timestamp`` defaults to now; a string is used as is. ``api_params`` may not
    override a system parameter.
    """
    params: dict[str, str] = {
        "method": method,
        "app_key": app_key,
        "timestamp": timestamp if isinstance(timestamp, str) else format_timestamp(timestamp),
        "v": API_VERSION,
        "format": "json",
        "sign_method": sign_method,
    }
    if session:
        params["session"] = session
    if partner_id:
        params["partner_id"] = partner_id
    for name, value in (api_params or {}).items():
        if name in params or name == "sign":
            raise ValueError(f"API parameter {name!r} clashes with a system parameter")
        params[name] = value
    params["sign"] = sign(params, secret, sign_method)
    return params
