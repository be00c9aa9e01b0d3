"""TLS contexts: servers from the `[tls]` certificate and key (SIP over TLS and HTTPS), and
the one client context of outgoing HTTPS webhooks and `wss://` app sockets.

One policy for every TLS listener: TLS 1.2 and 1.3 only, forward-secret AEAD cipher suites
for TLS 1.2 (TLS 1.3 suites are all AEAD), no compression, no renegotiation, no session
tickets. Clients are not asked for certificates (phones rarely have one; callers are
authorised by the apps' numbers and policies, the REST API by its bearer token).
As a client (`client_context`), confroom checks the server's certificate and host name
against the system CA store, or only against `[webhooks] ca_file` when that is set.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

__all__ = ["TLS12_CIPHERS", "TlsError", "client_context", "server_context"]

# ECDHE key exchange, AES-GCM or ChaCha20-Poly1305 only.
TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class TlsError(ValueError):
    """The certificate or key cannot be used (the message says which file and why)."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context for `cert` (PEM chain) and `key` (PEM); raises TlsError."""
    for what, path in (("cert", cert), ("key", key)):
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise TlsError(f"{what} {str(path)!r}: {e.strerror or e}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "KEY_VALUES_MISMATCH" in str(e).upper():
            raise TlsError(f"key {str(key)!r} does not match the certificate {str(cert)!r}"
                           ) from None
        raise TlsError(f"cannot load cert {str(cert)!r} / key {str(key)!r}: {reason}") from None
    return ctx


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """The context of outgoing TLS (HTTPS webhooks, wss app sockets): certificates and host
    names checked, TLS 1.2+, trusting the CAs of `ca_file` (PEM bundle) instead of the system
    store when given; raises TlsError when the bundle cannot be read or holds no CA."""
    if ca_file is None:
        ctx = ssl.create_default_context()
    else:
        try:
            ctx = ssl.create_default_context(cafile=str(ca_file))
        except FileNotFoundError as e:
            raise TlsError(f"CA file {str(ca_file)!r}: {e.strerror or e}") from None
        except (ssl.SSLError, OSError) as e:
            reason = getattr(e, "reason", None) or e.strerror or str(e)
            raise TlsError(f"CA file {str(ca_file)!r}: not a PEM CA bundle ({reason})"
                           ) from None
        if not ctx.get_ca_certs():
            raise TlsError(f"CA file {str(ca_file)!r} holds no CA certificate")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
