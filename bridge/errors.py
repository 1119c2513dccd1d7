"""The bridge's error tree. Every error the daemon raises on purpose is one of these.

    BridgeError
    ├── ConfigError            bad or missing configuration; names the key, never the secret
    ├── TmcError
    │   ├── FrameError         bytes that are not a valid TMC frame (codec)
    │   ├── ProtocolError      a valid frame that breaks the session rules (token, type, flag)
    │   └── LoginError         the server refused CONNECT (StatusCode / StatusPhrase)
    ├── SinkError              the sink could not commit a batch; nothing of it is committed
    │   └── SinkStopped        the sink was asked to stop while a batch was open
    └── RocketMQSendError      one RocketMQ send (or client start) failed; ``permanent``
                               when no retry can send that message

Adapters classify failures; the pipeline only acts on the class: a SinkError means
"not committed, safe to send again", and nothing in a batch that raised is ever confirmed.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """Configuration is invalid. The message names the offending key."""


class TmcError(BridgeError):
    """Anything wrong on the TMC side."""


class FrameError(TmcError):
    """Malformed TMC frame: short, over-long lengths, unknown header type or value format."""


class ProtocolError(TmcError):
    """A well-formed frame that is not acceptable in the current session state."""


class LoginError(TmcError):
    """CONNECT refused by the server (docs/protocol.md §5.5)."""

    def __init__(self, status_code: int, status_phrase: str | None) -> None:
        self.status_code = status_code
        self.status_phrase = status_phrase
        super().__init__(
            f"TMC login refused: status_code={status_code} phrase={status_phrase!r} "
            "(check app_key, app_secret and group)"
        )


class SinkError(BridgeError):
    """A batch was not committed. ``fatal`` means the sink client must be rebuilt first."""

    def __init__(self, message: str, *, fatal: bool = False, error_class: str = "unknown") -> None:
        super().__init__(message)
        self.fatal = fatal
        self.error_class = error_class


class SinkStopped(SinkError):
    """The sink stopped (shutdown) before the batch was committed."""


class RocketMQSendError(BridgeError):
    """One RocketMQ send did not reach SEND_OK (or a client did not start).

    ``permanent``: the message itself is wrong (too large, empty, illegal topic), so no
    retry can send it; the sink refuses the record and it is dead-lettered instead.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent
