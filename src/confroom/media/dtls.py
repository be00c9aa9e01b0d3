"""DTLS-SRTP (RFC 5763/5764) for WebRTC members, sans-IO: `DtlsIdentity` and `DtlsSrtp`.

`DtlsIdentity` is the node's certificate for DTLS: a P-256 self-signed one generated at start
(`generate()`), or loaded from PEM files (`load()`); its SHA-256 `fingerprint` goes into every
WebRTC answer (`a=fingerprint:sha-256 ...`).

`DtlsSrtp` is one call's DTLS association, driven by datagrams and time only: OpenSSL
(pyOpenSSL) runs over memory BIOs, so `feed(data, now)` takes a received DTLS datagram and
returns the datagrams to send back; no socket, no thread. We are the DTLS server
(`a=setup:passive`: the browser is active) unless told otherwise. When the handshake is done
the peer's certificate must match the fingerprint of its SDP, else the association fails; on
success `srtp` is a `confroom.media.srtp.SrtpContext` keyed from the exported keying material
(RFC 5764 section 4.2: client key, server key, client salt, server salt). Only the profile
SRTP_AES128_CM_SHA1_80 is offered (what every browser supports and what `SrtpContext`
implements). A handshake not complete `timeout` seconds after the association was created
fails with a clear `error` (a client that never completes DTLS); `poll(now)` drives
retransmissions (OpenSSL's DTLS timer) and that deadline.
"""

from __future__ import annotations

import datetime
import hmac
import logging
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from confroom.media.srtp import SrtpContext

__all__ = ["DtlsError", "DtlsIdentity", "DtlsSrtp", "format_fingerprint"]

log = logging.getLogger(__name__)

_SRTP_PROFILE: Final = b"SRTP_AES128_CM_SHA1_80"
_SRTP_SUITE: Final = "AES_CM_128_HMAC_SHA1_80"
_KEY_LEN: Final = 16
_SALT_LEN: Final = 14
_MAX_DATAGRAM: Final = 65535
DEFAULT_TIMEOUT: Final = 10.0  # seconds for the whole handshake


class DtlsError(Exception):
    """A DTLS association failed (handshake error, fingerprint mismatch, timeout)."""


def format_fingerprint(digest: bytes) -> str:
    """`AB:CD:...`, the SDP a=fingerprint form of a digest."""
    return ":".join(f"{b:02X}" for b in digest)


def parse_fingerprint(value: str) -> tuple[str, bytes]:
    """`("sha-256", digest)` from an SDP `a=fingerprint:` value; DtlsError when malformed."""
    algo, _, hexes = value.strip().partition(" ")
    try:
        digest = bytes.fromhex(hexes.replace(":", ""))
    except ValueError:
        raise DtlsError(f"malformed fingerprint {value[:120]!r}") from None
    if algo.lower() not in ("sha-256", "sha-384", "sha-512", "sha-1") or not digest:
        raise DtlsError(f"unsupported fingerprint {value[:120]!r}")
    return algo.lower(), digest


_HASHES: Final[dict[str, hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1(), "sha-256": hashes.SHA256(), "sha-384": hashes.SHA384(),
    "sha-512": hashes.SHA512(),
}


class DtlsIdentity:
    """A certificate and key for DTLS, and the SSL context built from them."""

    def __init__(self, cert: x509.Certificate, key: PrivateKeyTypes, origin: str) -> None:
        self.cert = cert
        self._key = key
        self.origin = origin  # "generated" or the certificate's path, for the log
        self.fingerprint = "sha-256 " + format_fingerprint(cert.fingerprint(hashes.SHA256()))
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
        ctx.set_tlsext_use_srtp(_SRTP_PROFILE)
        # the browser's certificate is self-signed: it is checked against the SDP fingerprint
        # after the handshake, not against a CA
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
        self.context = ctx

    def write_pem(self, folder: Path) -> tuple[Path, Path]:
        """Write the certificate and its key (mode 0600) as PEM files into `folder`."""
        cert = folder / "cert.pem"
        key = folder / "key.pem"
        cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.touch(mode=0o600)
        key.write_bytes(self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert, key

    @classmethod
    def generate(cls, common_name: str = "confroom") -> DtlsIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .sign(key, hashes.SHA256()))
        return cls(cert, key, "generated")

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> DtlsIdentity:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return cls(cert, key, str(cert_path))


class DtlsSrtp:
    """One call's DTLS-SRTP association (see the module docstring)."""

    def __init__(self, identity: DtlsIdentity, remote_fingerprint: str, now: float, *,
                 server: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.algo, self.remote_digest = parse_fingerprint(remote_fingerprint)
        self.server = server
        self.deadline = now + timeout
        self.timeout = timeout
        self.local_fingerprint = identity.fingerprint
        self.srtp: SrtpContext | None = None
        self.error: str | None = None
        self._conn = SSL.Connection(identity.context, None)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._next_timer: float | None = None

    @property
    def connected(self) -> bool:
        return self.srtp is not None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def start(self, now: float) -> list[bytes]:
        """The first flight (ClientHello) when we are the client; nothing for a server."""
        return [] if self.server else self._step(now)

    def feed(self, data: bytes, now: float) -> list[bytes]:
        """Take one received DTLS datagram; the datagrams to send back."""
        if self.error is not None:
            return []
        self._conn.bio_write(data)
        if self.srtp is not None:
            try:  # after the handshake: alerts (close_notify) and retransmitted finals
                self._conn.recv(_MAX_DATAGRAM)
            except SSL.ZeroReturnError:
                self.error = "the peer closed DTLS"
            except (SSL.WantReadError, SSL.Error):
                pass
            return self._drain()
        return self._step(now)

    def poll(self, now: float) -> list[bytes]:
        """Retransmit a lost flight when OpenSSL's timer says so; fail past the deadline."""
        if self.srtp is not None or self.error is not None:
            return []
        if now >= self.deadline:
            self.error = f"DTLS handshake not completed within {self.timeout:g} s"
            return []
        if self._conn.DTLSv1_get_timeout() == 0.0 or self._conn.DTLSv1_handle_timeout():
            return self._drain()
        return []

    def _step(self, now: float) -> list[bytes]:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return self._drain()
        except SSL.Error as e:
            self.error = f"DTLS handshake failed: {_ssl_reason(e)}"
            return self._drain()
        out = self._drain()
        self._finish()
        return out

    def _finish(self) -> None:
        peer = self._conn.get_peer_certificate()
        if peer is None:
            self.error = "DTLS peer sent no certificate"
            return
        digest = peer.to_cryptography().fingerprint(_HASHES[self.algo])
        if not hmac.compare_digest(digest, self.remote_digest):
            self.error = "DTLS peer certificate does not match the SDP fingerprint"
            return
        if self._conn.get_selected_srtp_profile() != _SRTP_PROFILE:
            self.error = "DTLS peer did not agree on SRTP_AES128_CM_SHA1_80"
            return
        material = self._conn.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (_KEY_LEN + _SALT_LEN))
        ck = material[:_KEY_LEN]
        sk = material[_KEY_LEN:2 * _KEY_LEN]
        cs = material[2 * _KEY_LEN:2 * _KEY_LEN + _SALT_LEN]
        ss = material[2 * _KEY_LEN + _SALT_LEN:]
        client, server = ck + cs, sk + ss
        local, remote = (server, client) if self.server else (client, server)
        self.srtp = SrtpContext(_SRTP_SUITE, local, remote, label="dtls")

    def _drain(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            try:
                out.append(self._conn.bio_read(_MAX_DATAGRAM))
            except SSL.WantReadError:
                return out


def _ssl_reason(e: SSL.Error) -> str:
    args = e.args[0] if e.args else None
    if isinstance(args, list) and args and isinstance(args[0], tuple):
        return "; ".join(str(part[-1]) for part in args)
    return str(e) or type(e).__name__
