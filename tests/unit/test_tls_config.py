"""TLS configuration ([tls], [sip] tls_port, [http] tls, [security] and per-app policies; env vars
and flags), the TLS server context, the client context of `[webhooks] ca_file`, the security
policy checks, and SipCore's Contact and Via for SIP over TLS (sans-IO)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from confroom.cli import build_parser
from confroom.config import ConfigError, load
from confroom.security import check_transport, insecure_keys
from confroom.sip.core import IncomingCall, SipCore
from confroom.sip.message import Request, Response, parse_message
from confroom.sip.peer import Peer
from confroom.tls import client_context, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(cert, key, another certificate's key), generated for the test run."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("confroom.test", "127.0.0.1")
    other = ca.issue_cert("other.test")
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    other.private_key_pem.write_to_path(str(d / "other-key.pem"))
    return d / "cert.pem", d / "key.pem", d / "other-key.pem"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_tls_keys_from_toml_env_and_flags(pki: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cert, key, _ = pki
    cfg = load(write(tmp_path, f'[sip]\ntls_port = 5061\n[tls]\ncert = "{cert}"\n'
                                f'key = "{key}"\n[security]\nsrtp = "required"\n'
                                '[[apps]]\ncall_hook = "http://x/c"\ntls = "required"\n'),
               env={})
    assert (cfg.sip_tls_port, cfg.tls_cert, cfg.tls_key) == (5061, cert, key)
    assert cfg.https and cfg.security_srtp == "required" and cfg.security_tls == "optional"
    app = cfg.apps[0]
    assert cfg.tls_policy(app) == "required" and cfg.srtp_policy(app) == "required"
    env = {"CONFROOM_SIP_TLS_PORT": "5071", "CONFROOM_TLS_CERT": str(cert),
           "CONFROOM_TLS_KEY": str(key)}
    cfg = load(None, env=env)
    assert cfg.sip_tls_port == 5071 and cfg.tls_configured
    args = build_parser().parse_args(["serve", "--sip-tls-port", "5081", "--tls-cert",
                                      str(cert), "--tls-key", str(key)])
    cfg = load(None, env={}, overrides={"sip_tls_port": args.sip_tls_port,
                                        "tls_cert": args.tls_cert, "tls_key": args.tls_key})
    assert cfg.sip_tls_port == 5081 and cfg.tls_key == key
    # [http] tls = false keeps the API on plain HTTP (e.g. behind a local proxy)
    cfg = load(write(tmp_path, f'[http]\ntls = false\n[tls]\ncert = "{cert}"\nkey = "{key}"\n'),
               env={})
    assert not cfg.https and cfg.sip_tls_port == 0
    # SIP over TLS only
    cfg = load(write(tmp_path, f'[sip]\ntransports = []\ntls_port = 5061\n[tls]\ncert = "{cert}"\n'
                                f'key = "{key}"\n'), env={})
    assert cfg.sip_transports == () and cfg.sip_tls_port == 5061


@pytest.mark.parametrize(("toml", "message"), [
    ('[sip]\ntls_port = 5061\n', "sip.tls_port is set but [tls] cert and key are not"),
    ('[tls]\ncert = "{cert}"\n', "needs both 'cert' and 'key'"),
    ('[tls]\ncert = "{cert}"\nkey = "{tmp}/missing.pem"\n', "missing.pem"),
    ('[tls]\ncert = "{cert}"\nkey = "{other}"\n', "does not match the certificate"),
    ('[tls]\ncert = "{key}"\nkey = "{key}"\n', "cannot load cert"),
    ('[http]\ntls = true\n', "http.tls = true needs [tls]"),
    ('[security]\ntls = "required"\n', "SIP over TLS is off"),
    ('[sip]\ntransports = []\n', "nothing to listen on"),
    ('[security]\nsrtp = "always"\n', 'security.srtp: expected "optional" or "required"'),
    ('[[apps]]\ncall_hook = "http://x/c"\nsrtp = 1\n', "apps[0].srtp"),
    ('[sip]\nport = 5060\ntls_port = 5060\n[tls]\ncert = "{cert}"\nkey = "{key}"\n',
     "is the TCP port too"),
    ('[webhooks]\nca_file = "{tmp}/nope.pem"\n', "webhooks.ca_file (CONFROOM_WEBHOOK_CA_FILE"),
    ('[webhooks]\nca_file = "{key}"\n', "not a PEM CA bundle"),
    ('[webhooks]\nca_file = "{cert}"\n', "holds no CA certificate"),
    ('[webhooks]\nca_file = 3\n', "webhooks.ca_file: expected the path"),
])
def test_tls_config_errors(pki: tuple[Path, Path, Path], tmp_path: Path, toml: str,
                           message: str) -> None:
    cert, key, other = pki
    text = toml.format(cert=cert, key=key, other=other, tmp=tmp_path)
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text), env={})
    assert message in str(e.value)


def test_server_context_is_tls12_or_newer_with_aead_ciphers(
    pki: tuple[Path, Path, Path],
) -> None:
    cert, key, _ = pki
    ctx = server_context(cert, key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)


def test_transport_policy() -> None:
    assert check_transport("tls", "sips:1000@h", "required") is None
    assert check_transport("udp", "sip:1000@h", "optional") is None
    refused = check_transport("tcp", "sip:1000@h", "required")
    assert refused is not None and refused.status == 403 and "TLS" in refused.warning
    sips = check_transport("udp", "SIPS:1000@h", "optional")
    assert sips is not None and sips.status == 403
    assert insecure_keys("udp") and not insecure_keys("tls")


def test_websocket_transports_and_policy() -> None:
    assert check_transport("wss", "sip:1000@h", "required") is None  # wss counts as TLS
    refused = check_transport("ws", "sip:1000@h", "required")
    assert refused is not None and refused.status == 403
    assert insecure_keys("ws") and not insecure_keys("wss")


def test_http_self_signed_from_toml_env_and_flag(pki: tuple[Path, Path, Path],
                                                 tmp_path: Path) -> None:
    base = '[http]\nport = 8443\ntoken = "t"\n'
    cfg = load(write(tmp_path, base + 'tls = "self-signed"\n'), env={})
    assert cfg.http_self_signed and cfg.https
    cfg = load(write(tmp_path, base), env={"CONFROOM_HTTP_SELF_SIGNED": "1"})
    assert cfg.http_self_signed and cfg.https
    args = build_parser().parse_args(["serve", "--http-self-signed"])
    cfg = load(write(tmp_path, base), env={},
               overrides={"http_self_signed": args.http_self_signed})
    assert cfg.http_self_signed
    args = build_parser().parse_args(["serve"])
    cfg = load(write(tmp_path, base), env={},
               overrides={"http_self_signed": args.http_self_signed})
    assert not cfg.http_self_signed and not cfg.https
    with pytest.raises(ConfigError, match="CONFROOM_HTTP_SELF_SIGNED"):
        load(write(tmp_path, base), env={"CONFROOM_HTTP_SELF_SIGNED": "maybe"})
    with pytest.raises(ConfigError, match='expected true, false or "self-signed"'):
        load(write(tmp_path, base + 'tls = "yes"\n'), env={})
    cert, key, _ = pki
    with pytest.raises(ConfigError, match="choose one"):
        load(write(tmp_path, base + f'tls = "self-signed"\n[tls]\ncert = "{cert}"\n'
                   f'key = "{key}"\n'), env={})


TLS_PEER = Peer("tls", "127.0.0.1", 40123)


def invite(uri: str) -> bytes:
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
          "m=audio 4000 RTP/AVP 0\r\n"
    return (
        f"INVITE {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 127.0.0.1:40123;branch=z9hG4bKtls1\r\n"
        "Max-Forwards: 70\r\nFrom: <sips:alice@127.0.0.1>;tag=f1\r\nTo: <sips:1000@127.0.0.1>\r\n"
        "Call-ID: tls1@test\r\nCSeq: 1 INVITE\r\nContact: <sips:alice@127.0.0.1:40123>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


@pytest.mark.parametrize(("uri", "contact"), [
    ("sip:1000@127.0.0.1:5061;transport=tls", "<sip:confroom@10.1.1.1:5061;transport=tls>"),
    ("sips:1000@127.0.0.1:5061", "<sips:confroom@10.1.1.1:5061>"),
])
def test_tls_dialog_contact_via_and_bye(uri: str, contact: str) -> None:
    core = SipCore("10.1.1.1", 5060, tls_port=5061)
    core.receive_datagram(invite(uri), TLS_PEER, 0.0)
    core.datagrams_to_send()
    ev = core.next_event()
    assert isinstance(ev, IncomingCall)
    assert core.answer(ev.leg, b"v=0\r\n", 0.1)
    ((peer, data),) = core.datagrams_to_send()
    ok = parse_message(data)
    assert isinstance(ok, Response) and peer == TLS_PEER
    assert ok.headers.get("Contact") == contact
    ack = invite(uri).replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
    ack = ack.replace(b"To: <sips:1000@127.0.0.1>",
                      f"To: <sips:1000@127.0.0.1>;tag={ev.leg.local_tag}".encode())
    ack = ack.replace(b"branch=z9hG4bKtls1", b"branch=z9hG4bKtls2")
    core.receive_datagram(ack, TLS_PEER, 0.2)
    core.next_event()
    assert core.bye(ev.leg, 0.3)
    ((peer, data),) = core.datagrams_to_send()
    bye = parse_message(data)
    assert isinstance(bye, Request) and bye.method == "BYE" and peer == TLS_PEER
    assert str(bye.top_via).startswith("SIP/2.0/TLS 10.1.1.1:5061;")


def test_webhook_ca_file_from_toml_env_and_flag(tmp_path: Path) -> None:
    """One key, `[webhooks] ca_file` / CONFROOM_WEBHOOK_CA_FILE / --webhook-ca-file (the
    later wins); the client context trusts only that bundle and checks host names."""
    cas = [tmp_path / f"ca{i}.pem" for i in range(3)]
    for p in cas:
        trustme.CA().cert_pem.write_to_path(str(p))
    assert load(None, env={}).webhook_ca_file is None
    toml = write(tmp_path, f'[webhooks]\nca_file = "{cas[0]}"\n')
    assert load(toml, env={}).webhook_ca_file == cas[0]
    env = {"CONFROOM_WEBHOOK_CA_FILE": str(cas[1])}
    assert load(toml, env=env).webhook_ca_file == cas[1]
    args = build_parser().parse_args(["serve", "--webhook-ca-file", str(cas[2])])
    cfg = load(toml, env=env, overrides={"webhook_ca_file": args.webhook_ca_file})
    assert cfg.webhook_ca_file == cas[2]
    ctx = client_context(cas[2])
    assert len(ctx.get_ca_certs()) == 1
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
