"""``source.tmc``: the TMC WebSocket source's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bridge.config_fields import (
    GroupName,
    Name,
    PositiveFloat,
    PositiveInt,
    Secret,
    _Model,
    _Problems,
    _secret,
    checked_url,
    one_secret_problems,
)


class TmcGroupConfig(_Model):
    """One TMC group of ``source.tmc.groups``."""

    name: GroupName
    #: Connections to this group; default: ``source.tmc.connections``.
    connections: PositiveInt | None = None


class TmcSourceConfig(_Model):
    """TMC WebSocket source (docs/protocol.md §5, §8)."""

    #: ws:// or wss://, parsed fully (host, port 1..65535, [IPv6]); see the module doc.
    url: str = "ws://mc.api.taobao.com/"
    app_key: Name
    #: Blank is refused: the login would only fail later, with a less clear message.
    app_secret: Secret = None
    #: Alternative to app_secret: a file holding the secret (e.g. a mounted Secret).
    app_secret_file: Path | None = None
    group: GroupName = "default"
    #: Parallel connections to the same group; the server spreads messages over them.
    connections: PositiveInt = 1
    #: Several groups in one bridge, instead of ``group``: each gets its own connections
    #: (``connections`` is the default per group) and, under ``routing.groups``, its own
    #: routes. TMC hands each message to one group only (its seller's, else its topic's,
    #: else ``default``), so the groups never share a message.
    groups: list[TmcGroupConfig] | None = None
    #: TMC's confirm timeout (about a minute). After stepping back from a sink outage
    #: (``pipeline.step_back_after_s``) with pushes left unconfirmed, the bridge stays
    #: logged out until this has passed since the last of them, so TMC has put them back
    #: in its queue, in order, before the next login (a redelivery arriving after newer
    #: events of the same order would reorder them downstream).
    server_confirm_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    pull_interval_s: PositiveFloat = 15.0
    #: A WebSocket ping goes out after this long without traffic; pongs are not awaited.
    ping_idle_s: PositiveFloat = 45.0
    #: The platform refuses fast reconnects: the first retry waits at least this long.
    reconnect_min_s: Annotated[float, Field(ge=0)] = 10.0
    reconnect_max_s: PositiveFloat = 120.0
    connect_timeout_s: PositiveFloat = 5.0
    #: Largest TMC frame read whole; a larger one is skipped as it arrives (README, Bad
    #: input and limits) and dead-lettered when its first 64 KiB hold a valid id.
    max_frame_bytes: Annotated[int, Field(ge=4096)] = 16 * 1024 * 1024
    #: Largest content after inflating a gzip ByteArray; a larger one is dead-lettered.
    max_content_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    #: A push not committed this long after it arrived is given up: not written, not
    #: confirmed. TMC redelivers it after its confirm timeout (about a minute), maybe to
    #: another replica, which would write it a second time if this one still did.
    max_hold_s: Annotated[float, Field(ge=1, le=3600)] = 50.0
    sdk: str = "tmc-bridge"
    #: Send a connection token from taobao.tmc.auth.get with every login, as the official
    #: Java client does on production. ``auto``: on when the url's host is exactly
    #: mc.api.taobao.com (so not for premc.api.taobao.com or the sandbox).
    auth_token: Literal["off", "on", "auto"] = "auto"  # noqa: S105 - a mode, not a secret
    #: The TOP gateway the token is fetched from (http:// or https://).
    api_url: str = "https://eco.taobao.com/router/rest"
    #: How the taobao.tmc.auth.get call is signed.
    api_sign_method: Literal["md5", "hmac", "hmac-sha256"] = "hmac-sha256"
    #: A PEM bundle of the CA certificates that a ``wss://`` url's (and an ``https://``
    #: api_url's) certificate must chain to, instead of the system's store (a private CA).
    tls_ca_file: Path | None = None
    #: Check the server's certificate and name. Off is for tests only: anyone on the path
    #: could then pose as TMC. See bridge/sources/tmc/tls.py.
    tls_verify: bool = True

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        return checked_url(value, ("ws", "wss"))

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return checked_url(value, ("http", "https"))

    @model_validator(mode="after")
    def _one_secret(self) -> TmcSourceConfig:
        problems = one_secret_problems(self.app_secret, self.app_secret_file)
        if self.groups is not None:
            if "group" in self.model_fields_set:
                problems.append(("groups", "set group or groups, not both"))
            if not self.groups:
                problems.append(("groups", "list at least one group (or set group instead)"))
            seen: set[str] = set()
            for i, grp in enumerate(self.groups):
                if grp.name in seen:
                    problems.append((f"groups.{i}.name", f"group {grp.name!r} is listed twice"))
                seen.add(grp.name)
        if self.reconnect_max_s < self.reconnect_min_s:
            problems.append(("reconnect_max_s", "must be >= reconnect_min_s"))
        if problems:
            raise _Problems(*problems)
        return self

    def secret(self) -> str:
        """The app secret, read from the file when configured that way."""
        return _secret(self.app_secret, self.app_secret_file, "source.tmc.app_secret_file")

    def group_connections(self) -> list[tuple[str, int]]:
        """(group, connections) for every group this source logs in to."""
        if self.groups is None:
            return [(self.group, self.connections)]
        return [(g.name, g.connections or self.connections) for g in self.groups]

    def group_names(self) -> list[str]:
        return [name for name, _ in self.group_connections()]
