"""``source.tmc``: the TMC WebSocket source's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from bridge.config_fields import (
    Name,
    PositiveFloat,
    PositiveInt,
    Secret,
    _Model,
    _Problems,
    _secret,
    _url_problem,
)


class TmcSourceConfig(_Model):
    """TMC WebSocket source (docs/protocol.md §5, §8)."""

    #: ws:// or wss://, parsed fully (host, port 1..65535, [IPv6]); see the module doc.
    url: str = "ws://mc.api.taobao.com/"
    app_key: Name
    #: Blank is refused: the login would only fail later, with a less clear message.
    app_secret: Secret = None
    #: Alternative to app_secret: a file holding the secret (e.g. a mounted Secret).
    app_secret_file: Path | None = None
    group: Name = "default"
    #: Parallel connections to the same group; the server spreads messages over them.
    connections: PositiveInt = 1
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

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        problem = _url_problem(value, ("ws", "wss"))
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> TmcSourceConfig:
        problems = []
        if (self.app_secret is None) == (self.app_secret_file is None):
            given = "both are" if self.app_secret is not None else "neither is"
            problems.append(
                ("app_secret", f"set exactly one of app_secret and app_secret_file ({given} set)")
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            problems.append(("reconnect_max_s", "must be >= reconnect_min_s"))
        if problems:
            raise _Problems(*problems)
        return self

    def secret(self) -> str:
        """The app secret, read from the file when configured that way."""
        return _secret(self.app_secret, self.app_secret_file, "source.tmc.app_secret_file")
