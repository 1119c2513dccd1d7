"""``source.tmc_http``: the TMC HTTP API source's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from bridge.config_fields import (
    GroupName,
    Name,
    PositiveFloat,
    Secret,
    _Model,
    _Problems,
    _secret,
    checked_url,
    one_secret_problems,
)

#: Most ids one ``taobao.tmc.messages.confirm`` takes (the gateway's limit).
MAX_CONFIRM_IDS = 200


class TmcHttpSourceConfig(_Model):
    """TMC over the TOP HTTP API (docs/protocol.md §2): consume and confirm calls."""

    #: The TOP gateway, http:// or https://.
    url: str = "https://eco.taobao.com/router/rest"
    app_key: Name
    app_secret: Secret = None
    #: Alternative to app_secret: a file holding the secret (e.g. a mounted Secret).
    app_secret_file: Path | None = None
    group: GroupName = "default"
    #: Messages asked for per consume call (the gateway allows 10 to 200).
    quantity: Annotated[int, Field(ge=10, le=200)] = 100
    sign_method: Literal["md5", "hmac", "hmac-sha256"] = "hmac-sha256"
    #: Wait after a consume that returned nothing; doubles up to idle_backoff_max_s.
    idle_backoff_s: Annotated[float, Field(ge=1)] = 1.0
    idle_backoff_max_s: Annotated[float, Field(ge=1)] = 5.0
    #: Wait after a failed call (gateway error, network); grows up to the max.
    error_backoff_min_s: Annotated[float, Field(ge=0.1)] = 1.0
    error_backoff_max_s: PositiveFloat = 60.0
    request_timeout_s: PositiveFloat = 10.0
    #: How long confirms gather before one confirm call (at most 200 ids a call).
    confirm_linger_ms: Annotated[float, Field(ge=0, le=10_000)] = 50.0
    #: A failed confirm call is tried this many times in all, then left: the messages
    #: come back and the committed-ids store confirms them without writing them again.
    confirm_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    #: A message not committed this long after it was consumed is given up: TMC
    #: redelivers it after its confirm timeout, maybe to another replica.
    max_hold_s: Annotated[float, Field(ge=1, le=3600)] = 50.0
    #: TMC's confirm timeout (about a minute), as ``source.tmc.server_confirm_timeout_s``.
    #: After stepping back from a sink outage with messages consumed and not confirmed,
    #: no consume call goes out until this has passed since the consume call that handed
    #: out the last of them, so TMC has put them back in its queue, in order (taken
    #: earlier, newer events of the same order would come first).
    server_confirm_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    #: A PEM bundle of the CA certificates that an ``https://`` url's certificate must
    #: chain to, instead of the system's store (a private CA).
    tls_ca_file: Path | None = None
    #: Check the gateway's certificate and name. Off is for tests only.
    tls_verify: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return checked_url(value, ("http", "https"))

    @model_validator(mode="after")
    def _checks(self) -> TmcHttpSourceConfig:
        problems = one_secret_problems(self.app_secret, self.app_secret_file)
        if self.idle_backoff_max_s < self.idle_backoff_s:
            problems.append(("idle_backoff_max_s", "must be >= idle_backoff_s"))
        if self.error_backoff_max_s < self.error_backoff_min_s:
            problems.append(("error_backoff_max_s", "must be >= error_backoff_min_s"))
        if problems:
            raise _Problems(*problems)
        return self

    def secret(self) -> str:
        """The app secret, read from the file when configured that way."""
        return _secret(self.app_secret, self.app_secret_file, "source.tmc_http.app_secret_file")
