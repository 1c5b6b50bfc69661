"""
TLS for the stats server: a certificate chain and its key, read and checked
at start so that a bad file stops the daemon with a clear message.
"""

from __future__ import annotations

import re

from OpenSSL import SSL, crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion


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


def server_tls_options(cert_file: str, key_file: str) -> CertificateOptions:
    """
    Options for serving TLS 1.2 or newer with the chain in C{cert_file}
    (leaf first, then intermediates) and the key in C{key_file}.

    @raise TLSFileError: naming the setting when a file cannot be used.
    """
    fail = TLSFileError

    try:
        with open(cert_file, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise fail("StatsTLSCertFile", cert_file, f"cannot read: {e.strerror}") from None
    try:
        with open(key_file, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise fail("StatsTLSKeyFile", key_file, f"cannot read: {e.strerror}") from None

    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise fail("StatsTLSCertFile", cert_file, "no PEM certificate in it")
    try:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as e:
        raise fail("StatsTLSCertFile", cert_file, f"not a valid certificate: {e}") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as e:
        raise fail("StatsTLSKeyFile", key_file, f"not a valid private key: {e}") from None

    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate(chain[0].to_cryptography())
    try:
        context.use_privatekey(key.to_cryptography_key())  # type: ignore[arg-type]
        context.check_privatekey()
    except SSL.Error:
        raise fail(
            "StatsTLSKeyFile", key_file, f"does not match the certificate in {cert_file}"
        ) from None

    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
