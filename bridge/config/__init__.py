"""Configuration: YAML -> ``${ENV}`` interpolation -> pydantic models.

Rules a user can rely on:

* Unknown keys are errors (``extra="forbid"``), so a typo never silently falls back to a
  default. Every error names the dotted path of the bad key.
* ``${VAR}`` and ``${VAR:-default}`` are replaced in every string value from the process
  environment, before validation. A missing variable without default is an error naming
  both the key and the variable.
* Secrets (``app_secret``, RocketMQ/ONS ``secret_key``, values under ``sink.kafka.extra``)
  are ``SecretStr`` or treated as such: they are never part of a repr, a log line or an
  error message; pydantic is told to hide inputs in its errors. Each secret can also come
  from a file (``*_file``), e.g. a mounted Kubernetes Secret.
* ``source.type`` / ``sink.type`` pick the adapter; exactly the section of that name must
  be present (``source.tmc`` or ``source.ons``, ``sink.kafka`` or ``sink.rocketmq``).
  Both sections are built from :mod:`bridge.registry`: each adapter brings its own
  config model (``bridge/sources/tmc/config.py``, ``bridge/sinks/kafka_config.py``, …);
  this package holds the bridge's own sections, loading and the checks beyond the file.

Decisions about broken input (everything is refused at check time, exit code 2):

* Each error is one line ``dotted.key: problem``; a model-level check names the exact
  key too (:class:`_Problems`), never just its section.
* URLs (``source.tmc.url``, ``name_server_domain``) are parsed fully: scheme, a host that
  is a DNS name, IPv4 or bracketed IPv6 address, a numeric port 1..65535, no whitespace,
  control or RFC 3986-excluded characters, no ``#fragment``. The URL is never echoed: it
  may carry ``user:password@``.
* Address lists: ``name_server`` (``;``-separated) needs a port on every entry;
  ``sink.kafka.bootstrap_servers`` (``,``-separated) may leave it out (librdkafka's
  default 9092) and may carry a ``protocol://`` prefix as librdkafka allows. Ports are
  1..65535, IPv6 in brackets. Entries are echoed: they hold no credentials.
* ``routing.topics`` must not be empty (every message would be dead-lettered "no route");
  sink topic names follow the sink's own rule (Kafka's or RocketMQ's); no empty names.
* Identity strings (app_key, groups, transactional_id, topics) and secrets must not be
  blank: an empty transactional.id silently makes a non-transactional librdkafka producer.
* Floats must be finite: ``.inf``/``.nan`` timeouts would reach asyncio and librdkafka.
* YAML errors give PyYAML's problem and the line/column, never the line itself; quoted
  text in the problem is left out unless it is a token name or one character, because an
  unquoted secret starting with ``!``, ``&`` or ``*`` reaches PyYAML as a tag or alias
  name. A key given twice in one mapping is an error (PyYAML would keep the last).
* :func:`check_runtime` does what needs more than the file: reads secret files and
  builds the librdkafka configuration without a broker, so ``sink.kafka.extra`` errors
  are librdkafka's own, named ``sink.kafka.extra.<property>``, values redacted. Both
  ``check-config`` and ``run`` call it, so ``run`` refuses before starting anything.
"""

from bridge.config.loading import interpolate, load, parse
from bridge.config.models import (
    BridgeConfig,
    HttpConfig,
    LogConfig,
    PipelineConfig,
    RoutingConfig,
    Section,
    SinkConfig,
    SourceConfig,
)
from bridge.config.runtime import check_runtime

# Each adapter's own model, re-exported for callers that build one directly (tests).
from bridge.rocketmq.config import RocketMQClientConfig
from bridge.sinks.kafka_config import KafkaSinkConfig
from bridge.sinks.rocketmq_config import RocketMQSinkConfig
from bridge.sources.ons_config import OnsSourceConfig
from bridge.sources.tmc.config import TmcSourceConfig

__all__ = [
    "BridgeConfig",
    "HttpConfig",
    "KafkaSinkConfig",
    "LogConfig",
    "OnsSourceConfig",
    "PipelineConfig",
    "RocketMQClientConfig",
    "RocketMQSinkConfig",
    "RoutingConfig",
    "Section",
    "SinkConfig",
    "SourceConfig",
    "TmcSourceConfig",
    "check_runtime",
    "interpolate",
    "load",
    "parse",
]
