"""
TLS options, both ways: a certificate chain and its key for the stats
server, and verified connections to Redis.  Every file is read and checked
at start, so that a bad one stops the daemon with a message naming its
setting.

pyOpenSSL, cryptography and service-identity are imported only when TLS
is used (several megabytes a daemon without TLS need not hold); the
configuration's checks and L{lost_reason} import this module either way.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

if TYPE_CHECKING:
    from OpenSSL import crypto
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.internet.ssl import CertificateOptions


class TLSFileError(Exception):
    """
    A certificate or key file cannot be used.

    @ivar setting: the configuration setting that names the file.
    @ivar path: the file.
    @ivar problem: what is wrong with it.
    """

    def __init__(self, setting: str, path: str, problem: str) -> None:
        super().__init__(f"{setting}: {path}: {problem}")
        self.setting = setting
        self.path = path
        self.problem = problem


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class _Files:
    """Reads PEM files, naming the setting in every error."""

    def fail(self, name: str, path: str, problem: str) -> TLSFileError:
        return TLSFileError(name, path, problem)

    def read(self, name: str, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise self.fail(name, path, f"cannot read: {e.strerror}") from None

    def certificates(self, name: str, path: str) -> list[crypto.X509]:
        """Every certificate in a PEM file, in order; at least one."""
        from OpenSSL import crypto

        blocks = _PEM_CERT.findall(self.read(name, path))
        if not blocks:
            raise self.fail(name, path, "no PEM certificate in it")
        try:
            return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
        except crypto.Error as e:
            raise self.fail(name, path, f"not a valid certificate: {e}") from None

    def key_pair(
        self, cert_name: str, cert_file: str, key_name: str, key_file: str
    ) -> tuple[list[crypto.X509], crypto.PKey]:
        """A chain (leaf first) and the private key that matches its leaf."""
        from OpenSSL import SSL, crypto

        chain = self.certificates(cert_name, cert_file)
        key_pem = self.read(key_name, key_file)
        try:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        except crypto.Error as e:
            raise self.fail(key_name, key_file, f"not a valid private key: {e}") from None
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(chain[0].to_cryptography())
        try:
            context.use_privatekey(key.to_cryptography_key())  # type: ignore[arg-type]
            context.check_privatekey()
        except SSL.Error:
            raise self.fail(
                key_name, key_file, f"does not match the certificate in {cert_file}"
            ) from None
        return chain, key


def server_tls_options(cert_file: str, key_file: str) -> CertificateOptions:
    """
    Options for serving TLS 1.2 or newer with the chain in C{cert_file}
    (leaf first, then intermediates) and the key in C{key_file}.

    @raise TLSFileError: naming the setting when a file cannot be used.
    """
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    chain, key = _Files().key_pair("StatsTLSCertFile", cert_file, "StatsTLSKeyFile", key_file)
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


def client_tls_options(
    server_name: str,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> IOpenSSLClientConnectionCreator:
    """
    Options for a TLS 1.2 or newer connection to Redis that verifies the
    server's certificate and its name (service-identity).

    @param server_name: the host name or IP address the certificate must name.
    @param ca_file: the certificates to trust (PEM, one or more); the
        system's trust store when not given.
    @param cert_file: a client certificate chain (leaf first), with its key
        in C{key_file}, for servers that ask for one.
    @raise TLSFileError: naming the setting when a file cannot be used.
    """
    from twisted.internet.ssl import (
        Certificate,
        TLSVersion,
        optionsForClientTLS,
        platformTrust,
        trustRootFromCertificates,
    )

    files = _Files()
    if ca_file is None:
        trust = platformTrust()
    else:
        roots = files.certificates("RedisTLSCAFile", ca_file)
        trust = trustRootFromCertificates([Certificate(root) for root in roots])
    extra: dict[str, object] = {"raiseMinimumTo": TLSVersion.TLSv1_2}
    if cert_file is not None and key_file is not None:
        chain, key = files.key_pair("RedisTLSCertFile", cert_file, "RedisTLSKeyFile", key_file)
        extra.update(privateKey=key, certificate=chain[0], extraCertChain=chain[1:])
    return optionsForClientTLS(server_name, trustRoot=trust, extraCertificateOptions=extra)


def lost_reason(why: Failure) -> str:
    """
    Why a connection ended, said plainly when TLS refused it: OpenSSL's
    reasons without their tuples, or the names a certificate lacks.
    """
    if "OpenSSL.SSL" not in sys.modules:
        # Not imported: no TLS was used, so TLS cannot be why (and the
        # question is not worth importing it for).
        return why.getErrorMessage()
    from OpenSSL import SSL
    from service_identity import VerificationError

    error = why.value
    if isinstance(error, VerificationError):
        names = []
        for mismatch in error.errors:
            wanted = mismatch.mismatched_id
            name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", wanted)
            names.append(name.decode("ascii") if isinstance(name, bytes) else str(name))
        return f"TLS: the server's certificate is not for {', '.join(names)}"
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(part[-1]) for part in error.args[0] if isinstance(part, tuple)]
        if reasons:
            return "TLS: " + ", ".join(reasons)
    return why.getErrorMessage()
