"""Connection settings of a RocketMQ client, shared by the RocketMQ sink and the ONS source."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator, model_validator

from bridge.config_fields import (
    Name,
    Secret,
    _address_list_problems,
    _Model,
    _Problems,
    _secret,
    _url_problem,
)


class RocketMQClientConfig(_Model):
    """Connection settings shared by the RocketMQ sink and the ONS source.

    The name server is either a ``host:port;host:port`` list or the URL of an address
    server (ONS ``ONSAddr`` style), from which the client fetches and refreshes the list.
    Credentials are ONS/ACL AccessKey + SecretKey; the client signs every request with the
    channel as part of the signed data, and sends nothing signed if the channel is empty.
    """

    #: ``host:port;host:port``; every entry with its port, as the old check required.
    name_server: str | None = None
    #: http(s):// URL, parsed like source.tmc.url.
    name_server_domain: str | None = None
    access_key: Name | None = None
    secret_key: Secret = None
    secret_key_file: Path | None = None
    channel: str = "ALIYUN"
    #: Client instance name; default "<group>-<pid>", so clients of different groups in one
    #: process never share librocketmq's per-instance state (name servers, connections).
    instance_name: str | None = None

    @field_validator("name_server")
    @classmethod
    def _name_server_list(cls, value: str | None) -> str | None:
        problems = None if value is None else _address_list_problems(value, ";")
        if problems:
            raise ValueError(problems)
        return value

    @field_validator("name_server_domain")
    @classmethod
    def _address_server_url(cls, value: str | None) -> str | None:
        problem = None if value is None else _url_problem(value, ("http", "https"))
        if problem is not None:
            raise ValueError(f"{problem} (the address-server URL)")
        return value

    @model_validator(mode="after")
    def _addresses_and_credentials(self) -> RocketMQClientConfig:
        if (self.name_server is None) == (self.name_server_domain is None):
            raise ValueError("set exactly one of name_server and name_server_domain")
        problems = []
        has_secret = self.secret_key is not None or self.secret_key_file is not None
        if self.secret_key is not None and self.secret_key_file is not None:
            problems.append(("secret_key", "set only one of secret_key and secret_key_file"))
        elif self.access_key is None and has_secret:
            problems.append(
                ("access_key", "access_key and secret_key (or secret_key_file) go together")
            )
        elif self.access_key is not None and not has_secret:
            problems.append(
                ("secret_key", "access_key and secret_key (or secret_key_file) go together")
            )
        if not self.channel.strip():
            problems.append(("channel", "must not be empty (the client signs nothing without it)"))
        if problems:
            raise _Problems(*problems)
        return self

    def credentials(self, key: str) -> tuple[str, str, str] | None:
        """(access key, secret key, channel), or None when the cluster has no ACL."""
        if self.access_key is None:
            return None
        return (self.access_key, _secret(self.secret_key, self.secret_key_file, key), self.channel)


def ensure_native_library() -> None:
    """What every RocketMQ adapter needs installed: librocketmq (its kinds' requirements).
    Imported only when called: reading a config never loads the client."""
    from bridge.rocketmq.client import ensure_library

    ensure_library()
