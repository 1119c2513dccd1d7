"""The platform errors' table: TOP codes, sub codes and TMC login phrases -> what to do."""

from __future__ import annotations

import pytest

from bridge.errors import LoginError
from bridge.sources.tmc.platform_errors import SWITCH_OFF, hint, with_hint
from bridge.sources.tmc.top_client import TopCallError


@pytest.mark.parametrize(
    ("code", "sub_code", "message", "says"),
    [
        # The message service is off for the app: by sub code, by phrase, as a text code.
        (15, "isv.tmc-switch-off", "Remote service error", "message service"),
        (1, None, "the app do not enable messaging-channel feature", "message service"),
        ("isv.tmc-switch-off", None, None, "message service"),
        (None, None, "ISV.TMC-SWITCH-OFF: the app do not enable messaging-channel", "console"),
        # Signature and app key.
        (25, None, "Invalid signature", "app_secret"),
        (1, None, "invalid sign", "app_secret"),
        (None, "isv.invalid-signature", None, "app_secret"),
        (29, None, "Invalid app key", "app_key"),
        (1, None, "unknown app_key", "app_key"),
        ("29", None, None, "app_key"),
        # A seller's authorisation.
        (27, None, "Invalid session", "authorise the app again"),
        (None, "isv.invalid-sessionkey", None, "authorise the app again"),
        (1, None, "authorization expired", "authorise the app again"),
        # Group and connections.
        (1, None, "group not exist", "source.tmc.group"),
        (1, None, "too many connections in this group", "source.tmc.connections"),
        (1, None, "reconnect too frequently", "reconnect_min_s"),
        # Clock, limits, permissions, the gateway, the token.
        (31, "isv.invalid-timestamp", "Invalid timestamp", "clock"),
        (7, "accesscontrol.limited-by-app-access-count", "App Call Limited", "quota"),
        (11, None, "Insufficient ISV permissions", "permission"),
        (22, "isv.invalid-method", "Invalid method", "api_url"),
        (15, "isp.unknown-error", "Remote service error", "retrying"),
        (1, None, "auth token required: get one with taobao.tmc.auth.get", "auth_token"),
    ],
)
def test_known_errors_name_what_to_do(
    code: int | str | None, sub_code: str | None, message: str | None, says: str
) -> None:
    advice = hint(code, sub_code, message)
    assert advice is not None and says in advice


def test_the_switch_off_hint_is_in_the_console_terms() -> None:
    advice = hint(None, "isv.tmc-switch-off", None)
    assert advice == SWITCH_OFF
    assert "open platform console" in SWITCH_OFF and "subscribe" in SWITCH_OFF


def test_the_sub_code_wins_over_the_message_and_the_phrase_over_the_code() -> None:
    # A generic code 15 with a specific sub code: the sub code decides.
    assert "app_key" in (hint(15, "isv.appkey-not-exists", "Remote service error") or "")
    # A CONNECTACK's StatusCode is not a TOP code: its phrase decides.
    assert "message service" in (hint(25, None, "messaging-channel feature off") or "")


@pytest.mark.parametrize(
    ("code", "sub_code", "message"),
    [(None, None, None), (1, None, ""), (0, None, "something else entirely"), (True, None, None)],
)
def test_unknown_errors_have_no_hint(
    code: int | str | None, sub_code: str | None, message: str | None
) -> None:
    assert hint(code, sub_code, message) is None


def test_with_hint_appends_once() -> None:
    assert with_hint("refused", None) == "refused"
    assert with_hint("refused", "do this") == "refused; hint: do this"
    assert with_hint("refused; hint: do this", "do this") == "refused; hint: do this"


def test_top_call_errors_carry_the_hint() -> None:
    exc = TopCallError("taobao.tmc.auth.get", 15, "Remote service error", "isv.tmc-switch-off")
    assert exc.hint() == SWITCH_OFF
    assert str(exc).endswith(SWITCH_OFF)


def test_a_login_refusal_phrase_maps_like_the_console_error() -> None:
    exc = LoginError(1, "the app do not enable messaging-channel feature")
    assert hint(exc.status_code, None, exc.status_phrase) == SWITCH_OFF


# -- each source's hints name its own keys -------------------------------------------------

#: (code, sub_code, message, the key of each source: WebSocket, HTTP API, auth token).
_KEYED = [
    (25, None, "Invalid signature", "source.tmc.app_secret", "source.tmc_http.app_secret"),
    (29, None, "Invalid app key", "source.tmc.app_key", "source.tmc_http.app_key"),
    (1, None, "group not exist", "source.tmc.group", "source.tmc_http.group"),
    (22, "isv.invalid-method", "Invalid method", "source.tmc.api_url", "source.tmc_http.url"),
]


@pytest.mark.parametrize(("code", "sub_code", "message", "ws_key", "http_key"), _KEYED)
def test_hints_name_the_keys_of_the_source_that_made_the_call(
    code: int, sub_code: str | None, message: str, ws_key: str, http_key: str
) -> None:
    # The WebSocket login (and the auth token, whose gateway is source.tmc.api_url).
    ws = hint(code, sub_code, message)
    assert ws is not None and ws_key in ws
    assert hint(code, sub_code, message, section="source.tmc", url_key="api_url") == ws
    # The HTTP API source: its own section, and its gateway is source.tmc_http.url.
    http = hint(code, sub_code, message, section="source.tmc_http", url_key="url")
    assert http is not None and http_key in http
    assert "source.tmc." not in http
    assert "{" not in http and "{" not in ws


@pytest.mark.parametrize(("code", "sub_code", "message", "ws_key", "http_key"), _KEYED)
def test_top_call_errors_name_the_keys_of_their_section(
    code: int, sub_code: str | None, message: str, ws_key: str, http_key: str
) -> None:
    method = "taobao.tmc.messages.consume"
    http = TopCallError(
        method, code, message, sub_code, config_section="source.tmc_http", url_key="url"
    )
    assert http_key in str(http) and "source.tmc." not in str(http)
    assert http.hint() is not None and http_key in http.hint()  # type: ignore[operator]
    ws = TopCallError(method, code, message, sub_code)
    assert ws_key in str(ws)


def test_the_fallback_hints_name_the_section_too() -> None:
    # Not in the platform table: the TOP client's own rules, with the same keys.
    exc = TopCallError(
        "taobao.tmc.messages.consume",
        1,
        "odd",
        "isv.group-mismatch",
        config_section="source.tmc_http",
        url_key="url",
    )
    assert "check source.tmc_http.group" in str(exc)
