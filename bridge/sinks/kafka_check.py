"""``sink.kafka`` checked offline: the producer's librdkafka configuration is built
without a broker and closed at once, so ``sink.kafka.extra`` errors are librdkafka's own,
named ``sink.kafka.extra.<property>``, values redacted. Touches no network."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from bridge.config_fields import _report
from bridge.errors import ConfigError
from bridge.sinks.kafka_config import KafkaSinkConfig

if TYPE_CHECKING:
    from confluent_kafka import Producer


def check_offline(kafka: KafkaSinkConfig) -> None:
    """Raises ConfigError naming every bad ``sink.kafka.extra`` key, never a value."""
    problems = _kafka_problems(kafka)
    if problems:
        raise ConfigError(_report(problems))


#: SASL mechanisms that authenticate with sasl.username + sasl.password.
_SASL_WITH_PASSWORD = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _sasl_problems(extra: dict[str, str | int | float | bool]) -> list[str]:
    # librdkafka refuses this too, but its "sasl.username and sasl.password must be
    # set" names no single key; the bridge names the missing one.
    if not str(extra.get("security.protocol", "")).lower().startswith("sasl_"):
        return []
    mechanism = extra.get("sasl.mechanism", extra.get("sasl.mechanisms"))
    if mechanism not in _SASL_WITH_PASSWORD:
        return []
    return [
        f"sink.kafka.extra.{name}: required with sasl.mechanism {mechanism}"
        for name in ("sasl.username", "sasl.password")
        if not str(extra.get(name, "")).strip()
    ]


class _DiscardLog:
    """librdkafka ``logger`` for the check: the refusal comes back as the exception."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass


def _offline(conf: dict[str, Any]) -> dict[str, Any]:
    """Settings that keep a check-time producer off the network (found by experiment)."""
    # No broker: librdkafka then connects nowhere (a listener saw no connection).
    overrides: dict[str, Any] = {"bootstrap.servers": "", "logger": _DiscardLog()}
    protocol = str(conf.get("security.protocol", "")).lower()
    mechanism = str(conf.get("sasl.mechanism", conf.get("sasl.mechanisms", "GSSAPI")))
    method = str(conf.get("sasl.oauthbearer.method", "")).lower()
    if mechanism == "OAUTHBEARER" and method == "oidc":
        # OIDC fetches a token over HTTP at creation; a token callback stands in for it.
        # Only here: with any other mechanism confluent-kafka waits 10 s for a token.
        overrides["oauth_cb"] = lambda _conf: ("check-only", 2**31 - 1)
    if protocol.startswith("sasl_") and mechanism == "GSSAPI":
        # Kerberos runs kinit (which talks to the KDC) at creation; 0 turns that off.
        overrides["sasl.kerberos.min.time.before.relogin"] = 0
    return overrides


def _refusal(producer: type[Producer], conf: dict[str, Any]) -> str | None:
    """librdkafka's message when it refuses ``conf``, or None when it accepts it."""
    from confluent_kafka import KafkaException

    try:
        built = producer({**conf, **_offline(conf)})
    except KafkaException as exc:
        return str(exc.args[0].str())
    except (TypeError, ValueError) as exc:  # confluent-kafka's own type checks
        return str(exc)
    built.close()
    return None


def _librdkafka_text(message: str, extra: dict[str, str | int | float | bool]) -> str:
    text = " ".join(message.split()).removeprefix("Failed to create producer: ")
    # librdkafka quotes a refused value in these two forms; the value may be a secret.
    text = re.sub(
        r'Invalid value ".*?" for configuration property',
        "Invalid value for configuration property",
        text,
    )
    text = re.sub(
        r'(Configuration property "[^"]*") value .*? is outside', r"\1 value is outside", text
    )
    # Any other value of extra found in the text. Shorter ones are left: they cannot be
    # secrets, and replacing them would garble librdkafka's words.
    secrets = {v for v in extra.values() if isinstance(v, str) and len(v.strip()) >= 3}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


def _named_property(message: str, extra: dict[str, str | int | float | bool]) -> str | None:
    """The property a librdkafka refusal is about, when its text says so."""
    found: list[str] = re.findall(r"[`\"]([\w.=-]+)[`\"]", message)
    quoted = [name.partition("=")[0] for name in found]
    # "`sasl.oauthbearer.client.id` is mandatory when ...": the missing one is the key.
    if quoted and ("mandatory" in message or "must be set" in message):
        return quoted[0]
    for name in quoted:
        if name in extra:
            return name
    if "SASL mechanism" in message:  # "Unsupported SASL mechanism: <value>"
        return next((k for k in ("sasl.mechanism", "sasl.mechanisms") if k in extra), None)
    return None


def _kafka_problems(kafka: KafkaSinkConfig) -> list[str]:
    """Build the sink's librdkafka configuration without a broker and close it at once.

    An unknown property, a wrong value type or range, an impossible combination: each
    is librdkafka's own message, named ``sink.kafka.extra.<property>``. librdkafka names
    aliases by their canonical name (``linger.ms`` -> ``queue.buffering.max.ms``), so a
    message that quotes no property of ``extra`` is attributed by adding the properties
    one at a time until the same refusal appears.
    """
    # Lazy: only a Kafka sink loads librdkafka (tmc-bridge --version stays light).
    from confluent_kafka import Producer

    from bridge.observability.metrics import Metrics
    from bridge.sinks.kafka import KafkaSink

    extra = dict(kafka.extra)
    own = _sasl_problems(extra)
    if own:
        return own
    full = KafkaSink(kafka, metrics=Metrics()).producer_config()
    message = _refusal(Producer, full)
    if message is None:
        return []
    text = _librdkafka_text(message, extra)
    named = _named_property(message, extra)
    if named is not None:
        return [f"sink.kafka.extra.{named}: {text}"]
    base = {key: value for key, value in full.items() if key not in extra}
    if _refusal(Producer, base) is not None:
        return [f"sink.kafka: {text}"]
    prefix, first_refused = dict(base), None
    for key, value in extra.items():
        prefix[key] = value
        refused = _refusal(Producer, prefix)
        if refused == message:
            return [f"sink.kafka.extra.{key}: {text}"]
        if refused is not None and first_refused is None:
            first_refused = key
    where = f"sink.kafka.extra.{first_refused}" if first_refused else "sink.kafka.extra"
    return [f"{where}: {text}"]
