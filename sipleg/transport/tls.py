"""
TLS settings of a leg: certificates, trust and client verification.

The contexts come from L{twisted.internet.ssl} (pyOpenSSL underneath).  A
client verifies the server's certificate chain against the configured CA
(or the platform trust store) and its identity with C{service_identity}
against the host name or IP address it meant to reach: a DNS-ID for names
(and then SNI is sent), an IP-ID for address literals (no SNI, RFC 6066
§3).  A server can ask for client certificates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

__all__ = [
    "VERIFY_CLIENT_MODES",
    "CurrentServerOptions",
    "ListenerTLSFactory",
    "PEMSource",
    "TLSConfig",
    "describe_tls_failure",
]

#: The accepted values of C{verify_client}.
VERIFY_CLIENT_MODES = ("none", "optional", "required")

#: PEM data (C{bytes}) or the path of a PEM file (C{str} or path-like).
PEMSource = bytes | str | os.PathLike[str]

_Loaded = TypeVar("_Loaded")

# Client options are cached per host name: building one creates an OpenSSL
# context and loads the trust store.
_CLIENT_OPTIONS_CACHE_SIZE = 256


def _read_pem(source: PEMSource) -> bytes:
    """
    @param source: PEM bytes or a file path.
    @return: the PEM bytes.
    """
    if isinstance(source, bytes):
        return source
    with open(source, "rb") as pem_file:
        return pem_file.read()


def _loaded(source: PEMSource, what: str, load: Callable[[bytes], _Loaded]) -> _Loaded:
    """
    C{load} the PEM data of C{source}; a failure names the file.

    @param what: what the file should hold, for the error.
    @raise ValueError: C{load} failed: C{"PATH: cannot load the WHAT:
        REASON"}.
    @raise OSError: the file cannot be read.
    """
    pem = _read_pem(source)
    try:
        return load(pem)
    except (ValueError, TypeError) as error:
        # cryptography's reasons end in a long "See https://..." pointer.
        reason = str(error).split(". See ")[0]
        raise ValueError(f"{_name(source)}: cannot load the {what}: {reason}") from None


def _name(source: PEMSource) -> str:
    """
    C{source} in an error: its file name.
    """
    return "PEM data" if isinstance(source, bytes) else os.fsdecode(source)


def _certificates(pem: bytes) -> list[x509.Certificate]:
    """
    Every certificate of a PEM bundle, in order.

    @raise ValueError: the data holds no certificate.
    """
    return x509.load_pem_x509_certificates(pem)


class TLSConfig:
    """
    Certificates and verification policy of a TLS leg.

    @ivar verify_client: C{"none"} (do not ask for a client certificate),
        C{"optional"} (ask, verify one if given) or C{"required"} (refuse
        clients without a valid certificate).
    """

    def __init__(
        self,
        cert: PEMSource | None,
        key: PEMSource | None,
        ca: PEMSource | None = None,
        verify_client: str = "none",
    ) -> None:
        """
        @param cert: our certificate, optionally followed by its
            intermediate CA certificates (a chain file).  Needed to serve;
            for a client it is presented when the server asks.  L{None}
            makes a client-only configuration without a certificate.
        @param key: the private key of C{cert}.
        @param ca: the CA certificates trusted to sign the peer's
            certificate; L{None} uses the platform's trust store.
        @param verify_client: see L{verify_client}.
        @raise ValueError: bad C{verify_client}, C{cert} without C{key}, or
            PEM data that does not load.
        @raise OSError: a file cannot be read.
        """
        if verify_client not in VERIFY_CLIENT_MODES:
            raise ValueError(f"verify_client must be one of {VERIFY_CLIENT_MODES}")
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        self.verify_client = verify_client
        # Our certificate, its chain and key, as cryptography objects (what
        # pyOpenSSL wants on a context).
        self._certificate: x509.Certificate | None = None
        self._chain: list[x509.Certificate] = []
        self._key: Any = None
        if cert is not None and key is not None:
            self._certificate, *self._chain = _loaded(cert, "certificate", _certificates)
            self._key = _loaded(key, "private key", partial(load_pem_private_key, password=None))
            if self._key.public_key() != self._certificate.public_key():
                raise ValueError(
                    f"the private key {_name(key)} is not the key of the certificate {_name(cert)}"
                )
        # Trusted CAs as Twisted certificates (what trust roots are made of).
        self._ca: list[Certificate] | None = None
        if ca is not None:
            self._ca = [
                Certificate(X509.from_cryptography(c)) for c in _loaded(ca, "CA certificates", _certificates)
            ]
        self._server_options: CertificateOptions | None = None
        self._client_options: dict[str, Any] = {}

    @property
    def certificate(self) -> x509.Certificate | None:
        """
        Our certificate (L{None} for a client-only configuration).
        """
        return self._certificate

    def _trust_root(self) -> Any:
        """
        The C{IOpenSSLTrustRoot} peers are verified against.
        """
        if self._ca is None:
            return platformTrust()
        return trustRootFromCertificates(self._ca)

    def _own_certificate(self) -> dict[str, Any]:
        """
        Our certificate as L{CertificateOptions} arguments (none for a
        client-only configuration).
        """
        if self._certificate is None:
            return {}
        return {
            "privateKey": self._key,
            "certificate": self._certificate,
            "extraCertChain": self._chain,
        }

    def server_options(self) -> CertificateOptions:
        """
        The context factory for accepted connections.

        @return: a L{CertificateOptions} (built once, then reused).
        @raise ValueError: the configuration has no certificate.
        """
        if self._server_options is None:
            if self._certificate is None:
                raise ValueError("a TLS server needs a certificate and key")
            options = self._own_certificate()
            if self.verify_client != "none":
                options["trustRoot"] = self._trust_root()
            server_options = CertificateOptions(**options)
            # A trustRoot implies requireCertificate=True and the two cannot
            # be passed together; the context is only built later, so the
            # flag can still be relaxed for "optional".
            server_options.requireCertificate = self.verify_client == "required"
            self._server_options = server_options
        return self._server_options

    def client_options(self, hostname: str) -> Any:
        """
        The connection creator for a connection to C{hostname}.

        The server must present a certificate chaining to the trusted CAs
        and valid for C{hostname}: a DNS name (also sent as SNI) or an IP
        address literal (checked against the certificate's IP entries).

        @param hostname: the host the connection is meant to reach, as in
            the SIP URI or Via (IPv6 without brackets).
        @return: an C{IOpenSSLClientConnectionCreator}.
        """
        options = self._client_options.get(hostname)
        if options is None:
            # Our certificate goes in as extra options rather than as
            # clientCertificate, which would pass deprecated pyOpenSSL
            # objects to the context.
            options = optionsForClientTLS(
                hostname,
                trustRoot=self._trust_root(),
                extraCertificateOptions=self._own_certificate(),
            )
            if len(self._client_options) >= _CLIENT_OPTIONS_CACHE_SIZE:
                self._client_options.clear()
            self._client_options[hostname] = options
        return options


def describe_tls_failure(reason: BaseException, hostname: str | None = None) -> str:
    """
    Describe why a TLS connection could not be set up.

    @param reason: what the TLS layer reported.
    @param hostname: the host the certificate had to match, if known.
    @return: C{"TLS verification failed: ..."} for an identity mismatch,
        C{"TLS handshake failed: ..."} otherwise.
    """
    if isinstance(reason, VerificationError):
        target = f" {hostname}" if hostname else ""
        return f"TLS verification failed: certificate does not match{target}"
    if isinstance(reason, SSL.Error) and reason.args and isinstance(reason.args[0], list):
        # pyOpenSSL reports a list of (library, function, reason) tuples.
        details = "; ".join(str(entry[-1]) for entry in reason.args[0] if entry)
        return f"TLS handshake failed: {details or 'OpenSSL error'}"
    text = str(reason) or type(reason).__name__
    return f"TLS handshake failed: {text}"


@implementer(IOpenSSLServerConnectionCreator)
class CurrentServerOptions:
    """
    The server side of a listener whose L{TLSConfig} may be replaced (a
    reload): each new connection gets the context of the configuration
    current when it is accepted; connections already made keep theirs.
    """

    def __init__(self, current: Callable[[], TLSConfig]) -> None:
        """
        @param current: the listener's configuration now.
        """
        self._current = current

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._current().server_options().getContext(), None)


class ListenerTLSFactory(TLSMemoryBIOFactory):
    """
    The TLS wrapper of a stream pool's listening factory, passing a refusal on instead of
    wrapping L{None}.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)
