"""Throw-away X.509 material for tests: a CA and server certificates it signs.

Made with the ``openssl`` command line (the venv has no ``cryptography``): EC P-256 keys,
valid for ``days`` days from now. A server certificate names ``localhost`` and
127.0.0.1 (and ::1), so clients that check the host name (Python's ``ssl``, librdkafka,
Java) accept it for a local listener. Keys are unencrypted PKCS#8 PEM files, mode 0600.

Kafka reads the server's key and chain straight from one PEM file
(``ssl.keystore.type=PEM``, :attr:`ServerCert.keystore_pem`), so no PKCS12 or ``keytool``
is needed; librdkafka and Python take the CA as a PEM bundle (``ssl.ca.location``,
``cafile``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devtools.brokers.processes import BrokerError, require_tool, run_captured, tail

__all__ = ["CertificateAuthority", "ServerCert", "make_ca"]

_TIMEOUT_S = 60.0


def _openssl(*args: str, what: str) -> None:
    openssl = require_tool("openssl", "to make test certificates")
    result = run_captured([openssl, *args], timeout_s=_TIMEOUT_S, what=f"openssl {what}")
    if result.returncode != 0:
        raise BrokerError(
            f"openssl {what} failed (exit {result.returncode}):\n{tail(result.stdout)}"
        )


@dataclass(frozen=True)
class ServerCert:
    """A server certificate signed by a :class:`CertificateAuthority`."""

    #: The certificate followed by the CA's (the chain a server sends).
    chain_pem: Path
    #: Its private key (unencrypted PKCS#8).
    key_pem: Path
    #: Key and chain in one file: Kafka's ``ssl.keystore.location`` with type PEM.
    keystore_pem: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA: ``cert_pem`` is what clients are told to trust."""

    directory: Path
    cert_pem: Path
    key_pem: Path

    def server_cert(
        self,
        name: str = "server",
        *,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1", "::1"),
        days: int = 7,
    ) -> ServerCert:
        """Issue ``<name>.pem`` (chain), ``<name>.key`` and ``<name>-keystore.pem``."""
        d = self.directory
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
        ext = d / f"{name}.ext"
        san = ",".join([*(f"DNS:{n}" for n in dns), *(f"IP:{ip}" for ip in ips)])
        ext.write_text(
            f"subjectAltName={san}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
        _new_key(key)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={dns[0] if dns else name}",
                 "-out", str(csr), what="req (server)")  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert_pem), "-CAkey",
            str(self.key_pem), "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-days", str(days), "-sha256", "-extfile", str(ext), "-out", str(cert),
            what="x509 (sign)",
        )  # fmt: skip
        chain = d / f"{name}.pem"
        chain.write_text(cert.read_text() + self.cert_pem.read_text())
        keystore = d / f"{name}-keystore.pem"
        keystore.write_text(key.read_text() + chain.read_text())
        keystore.chmod(0o600)
        csr.unlink()
        return ServerCert(chain_pem=chain, key_pem=key, keystore_pem=keystore)


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path), what="genpkey")  # fmt: skip
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "ca", *, days: int = 7) -> CertificateAuthority:
    """A new CA in ``directory`` (created): ``<name>.pem`` and ``<name>.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _new_key(key)
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(days),
        "-subj", f"/CN=tmc-bridge test CA {name} {os.urandom(4).hex()}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", str(cert), what="req -x509 (CA)",
    )  # fmt: skip
    return CertificateAuthority(directory=directory, cert_pem=cert, key_pem=key)
