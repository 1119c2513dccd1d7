"""What every config model shares: the base model, field types, the secret reader, and
pure checks of values (hosts, ports, URLs, address lists, blanks)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from bridge.errors import ConfigError

#: RocketMQ's own topic rule (TopicValidator): no dots, unlike Kafka.
_ROCKETMQ_TOPIC = re.compile(r"^[%|a-zA-Z0-9_-]{1,127}$")
#: Kafka's topic rule (Topic.validate); "." and ".." are refused separately.
_KAFKA_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: One DNS label. Underscores pass: container and compose service names use them.
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
#: Characters RFC 3986 excludes from URLs (whitespace and controls are checked apart).
_URL_EXCLUDED = frozenset('<>"{}|\\^`')
#: The ``protocol://`` prefixes librdkafka accepts on a bootstrap server.
_KAFKA_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _secret_not_blank(value: SecretStr | None) -> SecretStr | None:
    if value is not None and not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
#: A name the other side identifies us or a resource by: blank is always a mistake.
Name = Annotated[str, AfterValidator(_not_blank)]
Secret = Annotated[SecretStr | None, AfterValidator(_secret_not_blank)]

#: The platform's rule for a TMC group name (``taobao.tmc.group.add``).
GROUP_NAME_MAX = 32


def group_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a TMC group of the platform, or None. Its rules: at most 32
    characters, and nothing but ``default`` itself may start with ``default`` (that
    prefix is the platform's own)."""
    if not name.strip():
        return "must not be empty"
    if name != name.strip():
        return "must not start or end with a space"
    if len(name) > GROUP_NAME_MAX:
        return f"is {len(name)} characters long; the platform allows at most {GROUP_NAME_MAX}"
    if name.startswith("default") and name != "default":
        return "must not start with 'default' unless it is 'default' (the platform's rule)"
    return None


def _group_name(value: str) -> str:
    problem = group_name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


#: A TMC group name, checked against the platform's rules.
GroupName = Annotated[str, AfterValidator(_group_name)]


class _Problems(ValueError):
    """Problems of named sub-keys, raised by a validator of the enclosing model.

    :func:`_format_errors` appends each key to the model's dotted path, so a check that
    needs several fields still names the exact key (``sink.rocketmq.secret_key``).
    """

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))
        self.problems = problems


def _is_ip(text: str, version: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        version(text)
    except ValueError:
        return False
    return True


def _host_problem(host: str) -> str | None:
    """Why ``host`` is not a DNS name or IPv4 address (IPv6 comes in brackets), or None."""
    name = host
    if not name.isascii():
        try:  # an internationalised name, as websockets would send it
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            name = "\0"  # fails the label check below
    name = name.removesuffix(".")
    labels = name.split(".")
    if not host:
        return "the host is missing"
    if any(ch.isspace() for ch in host):
        return "the host contains a space"
    if re.fullmatch(r"[0-9.]+", name):
        return (
            None if _is_ip(name, ipaddress.IPv4Address) else "the host is not a valid IPv4 address"
        )
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return "the host contains characters not allowed in a host name"
    return None


def _split_host_port(text: str) -> tuple[str | None, str | None]:
    """(problem of the host part or None, the port text or None when absent)."""
    if not text.startswith("["):
        if text.count(":") > 1:
            return "an IPv6 address must be written in brackets, e.g. [::1]:9092", None
        host, sep, port = text.partition(":")
        return _host_problem(host), (port if sep else None)
    end = text.find("]")
    rest = text[end + 1 :]
    if end < 0:
        problem: str | None = "the IPv6 address has no closing ']'"
    elif not _is_ip(text[1:end], ipaddress.IPv6Address):
        problem = "the bracketed host is not a valid IPv6 address"
    elif rest and not rest.startswith(":"):
        problem = "unexpected characters after the IPv6 address"
    else:
        problem = None
    return problem, (rest[1:] if rest.startswith(":") else None)


def _host_port_problem(text: str, *, port_required: bool) -> str | None:
    """Why ``text`` is not ``host[:port]`` / ``[ipv6][:port]``, or None when it is."""
    problem, port = _split_host_port(text)
    if problem is not None:
        return problem
    if port is None:
        return "the port is missing" if port_required else None
    if not (port.isascii() and port.isdigit()):
        return "the port must be a number"
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} is out of range 1..65535"
    return None


def _url_text_problem(value: str) -> str | None:
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return "the URL contains a space or a control character"
    if _URL_EXCLUDED & set(value):
        return 'the URL contains characters not allowed in a URL (< > " { } | \\ ^ `)'
    return None


def _url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    """Why ``value`` is not a usable URL of one of ``schemes``, or None. Never echoes it."""
    problem = _url_text_problem(value)
    if problem is not None:
        return problem
    try:
        parts = urlsplit(value)
    except ValueError:  # unbalanced brackets, or not an IPv6 address inside them
        unbalanced = value.count("[") != value.count("]")
        return "the URL is malformed: " + (
            "an IPv6 host needs both [ and ]"
            if unbalanced
            else "the bracketed host is not a valid IPv6 address"
        )
    if parts.scheme.lower() not in schemes or not value[len(parts.scheme) :].startswith("://"):
        return "must start with " + " or ".join(f"{scheme}://" for scheme in schemes)
    if parts.fragment or "#" in value:
        return "the URL must not contain a #fragment"
    # user:password@ is allowed (and never echoed); the host and port are checked.
    problem = _host_port_problem(parts.netloc.rpartition("@")[2], port_required=False)
    return None if problem is None else f"the URL is invalid: {problem}"


def _address_list_problems(
    value: str, separator: str, *, port_required: bool = True, prefixes: tuple[str, ...] = ()
) -> str:
    """Problems of a ``host:port`` list (one text, empty when fine). Entries are echoed."""
    problems = []
    for raw in value.split(separator):
        entry = raw.strip()
        address = entry
        scheme, sep, rest = entry.partition("://")
        if sep and prefixes:
            if scheme.lower() not in prefixes:
                problems.append(f"{entry!r}: unknown protocol prefix {scheme!r}")
                continue
            address = rest
        problem = _host_port_problem(address, port_required=port_required)
        if problem is not None:
            problems.append(f"{entry!r} is not host:port ({problem})")
    return "; ".join(problems)


class _Model(BaseModel):
    # allow_inf_nan=False: an infinite or NaN timeout would reach asyncio and librdkafka.
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )


def checked_url(value: str, schemes: tuple[str, ...]) -> str:
    """``value`` if it is a URL of one of ``schemes``; else ValueError saying why (for a
    field validator)."""
    problem = _url_problem(value, schemes)
    if problem is not None:
        raise ValueError(problem)
    return value


def one_secret_problems(
    value: SecretStr | None, path: Path | None, key: str = "app_secret"
) -> list[tuple[str, str]]:
    """``[(key, why)]`` unless exactly one of the secret and its file is given."""
    if (value is None) == (path is None):
        given = "both are" if value is not None else "neither is"
        return [(key, f"set exactly one of {key} and {key}_file ({given} set)")]
    return []


def _secret(value: SecretStr | None, path: Path | None, key: str) -> str:
    if value is not None:
        return value.get_secret_value()
    assert path is not None
    # The path is echoed (it names a mount, not a secret); the content never is.
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret


def public_url(url: str) -> str:
    """The URL for printing: a ``user:password@`` part is replaced by ``***@``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


_REPORT_HEAD = "invalid configuration:\n"


def _report(lines: list[str]) -> str:
    """One ConfigError text for several problems: a head line, then one line each."""
    return _REPORT_HEAD + "\n".join(f"  {line}" for line in lines)


def _report_lines(text: str) -> list[str]:
    """The problem lines of a :func:`_report` text (or the text itself, if it is one)."""
    if not text.startswith(_REPORT_HEAD):
        return [text]
    return [line.strip() for line in text.removeprefix(_REPORT_HEAD).splitlines()]
