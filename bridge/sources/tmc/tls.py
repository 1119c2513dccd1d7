"""TLS client settings of the TMC sources: which CA certificates a ``wss://`` or
``https://`` endpoint's certificate is checked against.

``tls_ca_file`` (a PEM bundle) replaces the system's store, as curl's ``--cacert`` does:
for a private CA in front of the platform (a TLS-inspecting proxy) or a test endpoint.
``tls_verify: false`` turns the check off altogether and is for tests only: anyone on
the path could then read the app secret's signatures and every message.

A context is built once per setting and kept (reading a bundle costs milliseconds, a
reconnect loop would pay that on every attempt). A bundle that cannot be read raises an
:class:`OSError` whose text names the config key and the file, so the source's connect
loop shows it as its ``last_error`` (and in ``/readyz``) like any other network error.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path


@functools.lru_cache(maxsize=16)
def _context(ca_file: str | None, verify: bool, key: str) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise OSError(f"{key} {ca_file}: no such file") from None
    except PermissionError:
        raise OSError(f"{key} {ca_file}: not readable (permission denied)") from None
    except (ssl.SSLError, OSError) as exc:
        # ssl.SSLError for a file that holds no PEM certificate ("no certificate or crl
        # found", "[X509] PEM lib"); OSError for the rest (a directory, ...).
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise OSError(f"{key} {ca_file}: not a PEM CA bundle ({reason})") from None


def client_context(ca_file: Path | None, verify: bool, *, section: str) -> ssl.SSLContext:
    """The client context for ``<section>.tls_ca_file`` / ``<section>.tls_verify``.

    ``ca_file`` None: the system's CA store. Raises :class:`OSError` (see the module doc)
    when the bundle cannot be used.
    """
    return _context(None if ca_file is None else str(ca_file), verify, f"{section}.tls_ca_file")


def ws_ssl(url: str, ca_file: Path | None, verify: bool, *, section: str) -> ssl.SSLContext | None:
    """What websockets' ``connect(ssl=...)`` takes for ``url``: a context for ``wss://``,
    None for ``ws://`` (websockets refuses a context with a ``ws://`` URL)."""
    if not url.lower().startswith("wss://"):
        return None
    return client_context(ca_file, verify, section=section)


__all__ = ["client_context", "ws_ssl"]
