"""Configuration: the TOML file, CONFROOM_* environment variables and command-line flags.

Precedence (lowest to highest): built-in defaults, the TOML file, environment variables,
command-line flags. Everything the server needs to know is in one frozen `Config`.

TOML layout::

    [sip]
    host = "0.0.0.0"            # listen address
    port = 5060                 # UDP and TCP
    transports = ["udp", "tcp"] # [] with tls_port set: SIP over TLS only
    tls_port = 0                # SIP over TLS on this port (needs [tls]); 0 = off
    advertised_host = ""        # address written into Contact / SDP (default: host, or
                                #   127.0.0.1 when host is a wildcard)
    user_agent = "confroom/0.1" # User-Agent of SIP messages and Server of HTTP responses
                                #   ("" = send none)
    tcp_max_connections = 0     # SIP TCP connections in total (0 = from the descriptor limit)
    tcp_max_per_source = 0      # ... from one IP address (0 = from the descriptor limit)
    tcp_message_timeout = 10.0  # a connection's first message, and every message once its
                                #   first byte arrived, must be complete within this
    tcp_idle_timeout = 300.0    # close a connection without traffic, unless a call uses it
    max_message_bytes = 65536   # a TCP message's header block and its body may each be this big
    udp_rcvbuf = 4194304        # bytes of kernel receive buffer for the SIP UDP socket
    [limits]                    # admission control of new calls (503 + Retry-After beyond)
    drain_time = 30.0           # s: on SIGTERM, calls may finish for this long (0 = end now)
    max_calls_in_setup = 60     # INVITEs not yet answered or ended, whole node
    max_call_rate = 100.0       # new calls per second, whole node (call_burst banked)
    call_burst = 50.0
    source_rate = 20.0          # new INVITEs per second from one IP address
    source_burst = 40.0
    source_max_in_setup = 30    # calls in setup from one IP address
    max_clock_lateness = 0.05   # s: media clock this late = overload, new calls shed
    max_cpu = 0.9               # process CPU (1.0 = one core) above this = overload
    min_free_fds = 64           # descriptors kept free
    retry_after = 5             # s, Retry-After of a shed INVITE
    log_interval = 10.0         # s between shed summary lines
    [rtp]
    ports = "20000-30000"       # inclusive range, one UDP port per call
    timeout = 30.0              # seconds without RTP before the call is ended (0 = never)
    [http]
    host = "127.0.0.1"
    port = 0                    # REST API / metrics / health; 0 = off
    token = ""                  # bearer token the REST API requires (needed when port > 0)
    tls = true                  # HTTPS with the [tls] certificate (default: on when [tls] is set)
    max_connections = 0         # concurrent connections (0 = from the descriptor limit)
    max_per_source = 0          # ... from one IP address (0 = from the descriptor limit)
    header_timeout = 10.0       # a request's headers must arrive within this
    body_timeout = 10.0         # ... and its body within this
    keepalive_timeout = 15.0    # an idle keep-alive connection is closed after this
    [tls]
    cert = "cert.pem"           # PEM certificate chain (SIP over TLS, HTTPS)
    key = "key.pem"             # PEM private key of that certificate
    [security]
    tls = "optional"            # "required": calls must come over SIP over TLS (else 403)
    srtp = "optional"           # "required": the offer must be RTP/SAVP with a=crypto (else 488)
    [media]
    dir = "media"               # local files `play` may read; nothing outside it
    cache_dir = ""              # TTS and downloaded audio (default: <dir>/.cache)
    codecs = ["OPUS", "G722", "PCMU", "PCMA"]  # accepted and offered, in the server's order
    codec_priority = "caller"   # "server": the order of `codecs` wins over the offer's
    opus_bitrate = 32000        # bits/s of every Opus stream we send
    opus_complexity = 5         # 0..10
    [tts]
    voice = "en-us"
    [conference]
    talk_gate = true            # sum a member into the mix only while it talks (README Media)
    talk_gate_hang_ms = 400     # keep mixing this long after its last speech/loud frame
    talk_gate_level_dbfs = -35.0  # a frame this loud keeps the gate open even if not speech
    [cluster]                   # off unless redis is set (README "Running a cluster")
    redis = ""                  # redis://[:password@]host:port/db or rediss:// (TLS)
    node_id = ""                # this node's name in the cluster (default: host-pid)
    advertise = ""              # address other nodes send node-to-node RTP to
                                #   (default: sip.advertised_host / the SIP host)
    workers = 1                 # processes on this machine behind the same SIP/HTTP ports
    [webhooks]
    timeout = 10.0
    max_body = 1048576          # bytes of a hook's answer read at most; a longer one fails
    ca_file = ""                # PEM CA bundle trusted by https hooks and wss app sockets
                                #   instead of the system store ("" = the system store)
    ws_ack_timeout = 5.0        # WebSocket apps: seconds to ack session:new / a hook
    ws_max_payload = 24576      #   largest frame taken from an app (bigger: jambonz:error)
    ws_max_reconnects = 5       #   reconnect tries after a drop (0-5), then the call ends
    ws_handshake_timeout = 1.5  #   seconds for the WebSocket opening handshake
    [outbound]                  # outbound calls (REST create-call, dial)
    allowed_domains = []        # SIP domains/hosts `sip` targets may reach besides the trunks
    max_concurrent_calls = 10   # outbound calls in progress per account (0 = no outbound)
    calls_per_second = 5.0      # new outbound calls per second, whole server (burst: 1 s)
    [[trunks]]                  # `phone` targets go to the trunk whose prefix matches
    name = "carrier"
    uri = "sip:trunk.example.com:5060"   # or host = "trunk.example.com:5060"
    username = ""                        # optional digest credentials
    password = ""
    prefix = ["+1"]             # dialled numbers starting with one of these ([] = any)
    strip = 0                   # digits removed from the front of the number, then
    prepend = ""                #   this added, before it becomes the Request-URI user
    [[apps]]
    name = "default"
    call_hook = "http://127.0.0.1:3000/call"   # URL, hook table, or path to a JSON verb file
    call_status_hook = ""                      # optional
    webhook_secret = ""                        # signs requests (Jambonz-Signature)
    account_sid = "..."
    application_sid = "..."
    numbers = ["1000"]                         # dialled numbers (user part); "*" = default
    tls = "required"                           # optional: overrides [security] tls for this app
    srtp = "required"                          # optional: overrides [security] srtp

Environment: CONFROOM_SIP_HOST, CONFROOM_SIP_PORT, CONFROOM_SIP_TLS_PORT, CONFROOM_TLS_CERT,
CONFROOM_TLS_KEY, CONFROOM_RTP_PORTS, CONFROOM_RTP_TIMEOUT,
CONFROOM_HTTP_PORT, CONFROOM_API_TOKEN (the REST API's bearer token),
CONFROOM_HTTP_SELF_SIGNED (1: HTTPS/wss with a certificate generated at start), CONFROOM_MEDIA_DIR,
CONFROOM_APP (call hook of the default app), CONFROOM_WEBHOOK_SECRET (secret of the default app),
CONFROOM_WEBHOOK_MAX_BODY, CONFROOM_WEBHOOK_CA_FILE, CONFROOM_WS_ACK_TIMEOUT,
CONFROOM_WS_MAX_PAYLOAD, CONFROOM_WS_MAX_RECONNECTS, CONFROOM_WS_HANDSHAKE_TIMEOUT, and for
the connection limits
CONFROOM_SIP_USER_AGENT,
CONFROOM_SIP_TCP_MAX_CONNECTIONS, CONFROOM_SIP_TCP_MAX_PER_SOURCE,
CONFROOM_SIP_TCP_MESSAGE_TIMEOUT, CONFROOM_SIP_TCP_IDLE_TIMEOUT, CONFROOM_SIP_MAX_MESSAGE_BYTES,
CONFROOM_HTTP_MAX_CONNECTIONS, CONFROOM_HTTP_MAX_PER_SOURCE, CONFROOM_HTTP_HEADER_TIMEOUT,
CONFROOM_HTTP_BODY_TIMEOUT, CONFROOM_HTTP_KEEPALIVE_TIMEOUT (see `LIMIT_KEYS`); for admission
control and draining CONFROOM_SIP_UDP_RCVBUF, CONFROOM_DRAIN_TIME, and CONFROOM_LIMITS_<KEY>
for every other [limits] key (e.g. CONFROOM_LIMITS_SOURCE_RATE); for outbound calls
CONFROOM_OUTBOUND_ALLOWED_DOMAINS (comma-separated), CONFROOM_OUTBOUND_MAX_CONCURRENT_CALLS,
CONFROOM_OUTBOUND_CALLS_PER_SECOND; for talk-gated mixing CONFROOM_TALK_GATE
(true/false), CONFROOM_TALK_GATE_HANG_MS, CONFROOM_TALK_GATE_LEVEL_DBFS; for clustering
CONFROOM_REDIS, CONFROOM_NODE_ID, CONFROOM_CLUSTER_ADVERTISE, CONFROOM_WORKERS.
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from confroom.admission import AdmissionLimits, parse_networks
from confroom.media.codecs import CODECS, OpusConfig
from confroom.sip.core import USER_AGENT
from confroom.sip.message import SipParseError, parse_uri

DEFAULT_ACCOUNT_SID = "00000000-0000-4000-8000-000000000001"
DEFAULT_APPLICATION_SID = "00000000-0000-4000-8000-000000000002"
DEFAULT_WEBHOOK_MAX_BODY = 1024 * 1024  # bytes


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Hook:
    """A webhook: a URL plus how to call it."""

    url: str
    method: str = "POST"
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, value: object, where: str) -> Hook:
        """Accept a URL string or a {url, method, username, password} table."""
        if isinstance(value, str) and value:
            return cls(url=value)
        if isinstance(value, Mapping):
            url = value.get("url")
            if not isinstance(url, str) or not url:
                raise ConfigError(f"{where}: hook needs a non-empty 'url'")
            method = str(value.get("method", "POST")).upper()
            if method not in ("GET", "POST", "WS"):
                raise ConfigError(
                    f"{where}: hook method must be GET, POST or WS, not {method!r}")
            user = value.get("username")
            pw = value.get("password")
            return cls(
                url=url,
                method=method,
                username=str(user) if user is not None else None,
                password=str(pw) if pw is not None else None,
            )
        raise ConfigError(f"{where}: a hook is a URL string or a table with 'url'")


@dataclass(frozen=True)
class AppConfig:
    """One application: where its verbs come from and who it belongs to."""

    name: str = "default"
    # Either a webhook (call_hook) or a local JSON verb list (verbs_file); exactly one is set.
    call_hook: Hook | None = None
    verbs_file: Path | None = None
    call_status_hook: Hook | None = None
    webhook_secret: str | None = None
    account_sid: str = DEFAULT_ACCOUNT_SID
    application_sid: str = DEFAULT_APPLICATION_SID
    numbers: tuple[str, ...] = ("*",)
    # media/transport security policy of this app; None: the [security] default
    tls: str | None = None
    srtp: str | None = None


POLICIES = ("optional", "required")


@dataclass(frozen=True)
class Trunk:
    """An outbound SIP trunk: where `phone` targets whose number matches `prefixes` go."""

    name: str
    host: str
    port: int | None = None
    transport: str = "udp"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefixes: tuple[str, ...] = ()  # () = any number
    strip: int = 0
    prepend: str = ""


def _trunk_from_table(t: Mapping[str, Any], index: int) -> Trunk:
    where = f"trunks[{index}]"
    if not isinstance(t, Mapping):
        raise ConfigError(f"{where}: expected a table")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' is required")
    uri, host_value = t.get("uri"), t.get("host")
    if (uri is None) == (host_value is None):
        raise ConfigError(f"{where} ({name}): set exactly one of 'uri' (sip:host[:port]) or "
                          "'host' (host[:port])")
    text = str(uri) if uri is not None else f"sip:{host_value}"
    try:
        parsed = parse_uri(text)
    except SipParseError as e:
        raise ConfigError(f"{where} ({name}): {text!r} is not a SIP URI: {e.reason}") from None
    if parsed.scheme not in ("sip", "sips") or not parsed.host:
        raise ConfigError(f"{where} ({name}): {text!r} is not a sip: URI with a host")
    transport = str(parsed.params.get("transport") or
                    ("tls" if parsed.scheme == "sips" else "udp")).lower()
    if transport not in ("udp", "tcp"):
        raise ConfigError(f"{where} ({name}): transport {transport!r}: outbound calls go over "
                          "udp or tcp (confroom does not dial out over TLS)")
    prefixes = t.get("prefix", [])
    if isinstance(prefixes, str):
        prefixes = [prefixes] if prefixes else []
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise ConfigError(f"{where} ({name}).prefix: a string or a list of strings")
    user, pw = t.get("username"), t.get("password")
    if bool(user) != bool(pw):
        raise ConfigError(f"{where} ({name}): 'username' and 'password' go together")
    strip = t.get("strip", 0)
    if isinstance(strip, bool) or not isinstance(strip, int) or strip < 0:
        raise ConfigError(f"{where} ({name}).strip: a number of digits >= 0")
    prepend = str(t.get("prepend", ""))
    if any(ch not in "+0123456789*#" for ch in prepend):
        raise ConfigError(f"{where} ({name}).prepend: digits (and + * #) only")
    return Trunk(name=name, host=parsed.host.strip("[]"), port=parsed.port, transport=transport,
                 username=str(user) if user else None, password=str(pw) if pw else None,
                 prefixes=tuple(prefixes), strip=strip, prepend=prepend)


@dataclass(frozen=True)
class Config:
    sip_host: str = "0.0.0.0"
    sip_port: int = 5060
    sip_transports: tuple[str, ...] = ("udp", "tcp")
    advertised_host: str = ""
    sip_tls_port: int = 0  # SIP over TLS; 0 = off
    tls_cert: Path | None = None
    tls_key: Path | None = None
    http_tls: bool | None = None  # None: HTTPS exactly when [tls] is configured
    http_self_signed: bool = False  # HTTPS/wss with a certificate generated at start
    security_tls: str = "optional"
    security_srtp: str = "optional"
    rtp_port_min: int = 20000
    rtp_port_max: int = 30000
    rtp_timeout: float = 30.0
    http_host: str = "127.0.0.1"
    http_port: int = 0
    api_token: str = field(default="", repr=False)  # bearer token of the REST API
    media_dir: Path = Path("media")
    cache_dir: Path | None = None
    tts_voice: str = "en-us"
    codecs: tuple[str, ...] = ("OPUS", "G722", "PCMU", "PCMA")
    codec_priority: str = "caller"
    opus_bitrate: int = 32000
    opus_complexity: int = 5
    talk_gate: bool = True
    talk_gate_hang_ms: int = 400
    talk_gate_level_dbfs: float = -35.0
    # clustering: "" = a single node with in-memory state (the default)
    cluster_redis: str = field(default="", repr=False)  # may hold a password
    cluster_node_id: str = ""
    cluster_advertise: str = ""
    workers: int = 1  # >1: a supervisor runs that many cluster nodes on the SIP/HTTP ports
    reuse_port: bool = False  # SO_REUSEPORT on the SIP and HTTP sockets (set for workers)
    # set by the --workers supervisor for worker i of n (CONFROOM_WORKER_SLOT="i/n") and its
    # private directory (CONFROOM_WORKER_DIR), where the workers pass SIP messages between
    # them (`confroom.cluster.forward`); -1 in any other process
    worker_index: int = -1
    worker_count: int = 0
    worker_dir: str = ""
    webhook_timeout: float = 10.0
    webhook_max_body: int = DEFAULT_WEBHOOK_MAX_BODY
    # CA bundle trusted by outgoing TLS (https hooks, wss app sockets); None = system store
    webhook_ca_file: Path | None = None
    # WebSocket apps (ws(s):// call hooks): ack wait, largest frame taken from an app,
    # reconnect tries after a drop, opening handshake timeout
    ws_ack_timeout: float = 5.0
    ws_max_payload: int = 24 * 1024
    ws_max_reconnects: int = 5
    ws_handshake_timeout: float = 1.5
    # connection limits and identity (LIMIT_KEYS); 0 caps are sized from the descriptor limit
    user_agent: str = USER_AGENT
    sip_tcp_max_connections: int = 0
    sip_tcp_max_per_source: int = 0
    sip_tcp_message_timeout: float = 10.0
    sip_tcp_idle_timeout: float = 300.0
    sip_max_message_bytes: int = 65536
    http_max_connections: int = 0
    http_max_per_source: int = 0
    http_header_timeout: float = 10.0
    http_body_timeout: float = 10.0
    http_keepalive_timeout: float = 15.0
    sip_udp_rcvbuf: int = 4 << 20
    drain_time: float = 30.0
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)
    shed_log_interval: float = 10.0
    apps: tuple[AppConfig, ...] = field(default_factory=lambda: (default_app(),))
    # outbound calls: trunks and policy
    trunks: tuple[Trunk, ...] = ()
    outbound_allowed_domains: tuple[str, ...] = ()
    outbound_max_concurrent_calls: int = 10
    outbound_calls_per_second: float = 5.0

    @property
    def contact_host(self) -> str:
        """The address peers should use to reach us (Contact, Via sent-by, SDP c=)."""
        if self.advertised_host:
            return self.advertised_host
        if self.sip_host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return self.sip_host

    @property
    def node_advertise(self) -> str:
        """The address other cluster nodes send node-to-node RTP to."""
        return self.cluster_advertise or self.contact_host

    @property
    def tls_configured(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def https(self) -> bool:
        """Whether the REST API (and the pages, and /sip as wss) is served over TLS."""
        if self.http_self_signed:
            return True
        return self.tls_configured if self.http_tls is None else self.http_tls

    def tls_policy(self, app: AppConfig) -> str:
        return app.tls or self.security_tls

    def srtp_policy(self, app: AppConfig) -> str:
        return app.srtp or self.security_srtp

    @property
    def media_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.media_dir / ".cache"

    def app_for_number(self, number: str) -> AppConfig:
        """The app serving a dialled number: an exact match, else the '*' app, else the first."""
        for app in self.apps:
            if number in app.numbers:
                return app
        for app in self.apps:
            if "*" in app.numbers:
                return app
        return self.apps[0]


def embedded_app_path() -> Path:
    """The JSON verb file shipped with the package (what `make run` answers calls with)."""
    return Path(str(resources.files("confroom") / "apps" / "default.json"))


def default_app() -> AppConfig:
    return AppConfig(verbs_file=embedded_app_path())


def parse_port_range(value: str, where: str) -> tuple[int, int]:
    try:
        lo_s, hi_s = value.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise ConfigError(
            f"{where}: expected a port range like 20000-30000, got {value!r}"
        ) from None
    if not (1 <= lo <= hi <= 65535):
        raise ConfigError(f"{where}: port range {value!r} is not within 1-65535 or is reversed")
    return lo, hi


_WS_KEYS: dict[str, type[int] | type[float]] = {
    "ws_ack_timeout": float, "ws_max_payload": int, "ws_max_reconnects": int,
    "ws_handshake_timeout": float,
}


def app_source(value: str, where: str) -> dict[str, Any]:
    """`--app` / call_hook: an http(s) URL is a webhook, a ws(s) URL a WebSocket app,
    anything else a local verb file."""
    if value.startswith(("http://", "https://", "ws://", "wss://")):
        return {"call_hook": Hook(url=value), "verbs_file": None}
    path = Path(value)
    if not path.is_file():
        raise ConfigError(
            f"{where}: {value!r} is neither an http(s) or ws(s) URL nor an existing file")
    return {"call_hook": None, "verbs_file": path}


def _app_from_table(t: Mapping[str, Any], index: int) -> AppConfig:
    where = f"apps[{index}]"
    kw: dict[str, Any] = {"name": str(t.get("name", f"app{index}"))}
    hook = t.get("call_hook")
    if isinstance(hook, str):
        kw.update(app_source(hook, f"{where}.call_hook"))
    elif hook is not None:
        kw["call_hook"] = Hook.parse(hook, f"{where}.call_hook")
    else:
        raise ConfigError(f"{where}: 'call_hook' (URL or verb file) is required")
    if t.get("call_status_hook"):
        kw["call_status_hook"] = Hook.parse(t["call_status_hook"], f"{where}.call_status_hook")
    if t.get("webhook_secret"):
        kw["webhook_secret"] = str(t["webhook_secret"])
    kw["account_sid"] = str(t.get("account_sid", DEFAULT_ACCOUNT_SID))
    kw["application_sid"] = str(t.get("application_sid", uuid.uuid4()))
    numbers = t.get("numbers", ["*"])
    if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
        raise ConfigError(f"{where}.numbers: expected a list of strings")
    kw["numbers"] = tuple(numbers)
    for key in ("tls", "srtp"):
        if key in t:
            kw[key] = _policy(t[key], f"{where}.{key}")
    return AppConfig(**kw)


def _policy(value: object, where: str) -> str:
    if value not in POLICIES:
        raise ConfigError(f"{where}: expected \"optional\" or \"required\", got {value!r}")
    return str(value)


# (TOML section, key, Config field, type, environment variable) of the connection limits
LIMIT_KEYS: tuple[tuple[str, str, str, type, str], ...] = (
    ("sip", "user_agent", "user_agent", str, "CONFROOM_SIP_USER_AGENT"),
    ("sip", "tcp_max_connections", "sip_tcp_max_connections", int,
     "CONFROOM_SIP_TCP_MAX_CONNECTIONS"),
    ("sip", "tcp_max_per_source", "sip_tcp_max_per_source", int,
     "CONFROOM_SIP_TCP_MAX_PER_SOURCE"),
    ("sip", "tcp_message_timeout", "sip_tcp_message_timeout", float,
     "CONFROOM_SIP_TCP_MESSAGE_TIMEOUT"),
    ("sip", "tcp_idle_timeout", "sip_tcp_idle_timeout", float, "CONFROOM_SIP_TCP_IDLE_TIMEOUT"),
    ("sip", "max_message_bytes", "sip_max_message_bytes", int, "CONFROOM_SIP_MAX_MESSAGE_BYTES"),
    ("http", "max_connections", "http_max_connections", int, "CONFROOM_HTTP_MAX_CONNECTIONS"),
    ("http", "max_per_source", "http_max_per_source", int, "CONFROOM_HTTP_MAX_PER_SOURCE"),
    ("http", "header_timeout", "http_header_timeout", float, "CONFROOM_HTTP_HEADER_TIMEOUT"),
    ("http", "body_timeout", "http_body_timeout", float, "CONFROOM_HTTP_BODY_TIMEOUT"),
    ("http", "keepalive_timeout", "http_keepalive_timeout", float,
     "CONFROOM_HTTP_KEEPALIVE_TIMEOUT"),
)


def _limit_keys(data: Mapping[str, Any], env: Mapping[str, str], kw: dict[str, Any]) -> None:
    """The LIMIT_KEYS from the TOML tables, then from the environment (which wins)."""
    for section, key, attr, kind, env_name in LIMIT_KEYS:
        table = data.get(section, {})
        if key in table:
            if kind is str:
                if not isinstance(table[key], str):
                    raise ConfigError(f"{section}.{key}: expected a string")
                kw[attr] = table[key]
            else:
                kw[attr] = _num(table, key, section, kind)
        v = env.get(env_name)
        if v is None or (v == "" and kind is not str):
            continue
        if kind is str:
            kw[attr] = v
            continue
        try:
            kw[attr] = kind(v)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{env_name}: expected {what}, got {v!r}") from None


def _domains(value: object, where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(d, str) for d in items):
        raise ConfigError(f"{where}: a list of SIP domains or hosts")
    out = tuple(d.strip().lower() for d in items if d.strip())
    for d in out:
        if any(ch in d for ch in " @;<>/") or d.startswith("sip:"):
            raise ConfigError(f"{where}: {d!r} is not a domain or host (write e.g. "
                              "\"sip.example.com\" or \"10.0.0.5:5080\")")
    return out


def _outbound_keys(data: Mapping[str, Any], env: Mapping[str, str], kw: dict[str, Any]) -> None:
    """[outbound] and [[trunks]] from the TOML, then CONFROOM_OUTBOUND_* (which win)."""
    ob = data.get("outbound", {})
    if not isinstance(ob, Mapping):
        raise ConfigError("outbound: expected a table")
    for key in ob:
        if key not in ("allowed_domains", "max_concurrent_calls", "calls_per_second"):
            raise ConfigError(f"outbound.{key}: unknown key (allowed_domains, "
                              "max_concurrent_calls, calls_per_second)")
    if "allowed_domains" in ob:
        kw["outbound_allowed_domains"] = _domains(ob["allowed_domains"],
                                                  "outbound.allowed_domains")
    if "max_concurrent_calls" in ob:
        kw["outbound_max_concurrent_calls"] = _num(ob, "max_concurrent_calls", "outbound", int)
    if "calls_per_second" in ob:
        kw["outbound_calls_per_second"] = _num(ob, "calls_per_second", "outbound")
    if "trunks" in data:
        if not isinstance(data["trunks"], list):
            raise ConfigError("trunks: expected [[trunks]] tables")
        kw["trunks"] = tuple(_trunk_from_table(t, i) for i, t in enumerate(data["trunks"]))
    v = env.get("CONFROOM_OUTBOUND_ALLOWED_DOMAINS")
    if v is not None:
        kw["outbound_allowed_domains"] = _domains(v, "CONFROOM_OUTBOUND_ALLOWED_DOMAINS")
    for name, attr, kind in (
        ("CONFROOM_OUTBOUND_MAX_CONCURRENT_CALLS", "outbound_max_concurrent_calls", int),
        ("CONFROOM_OUTBOUND_CALLS_PER_SECOND", "outbound_calls_per_second", float),
    ):
        v = env.get(name)
        if v:
            try:
                kw[attr] = kind(v)
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {v!r}") from None


def _num(t: Mapping[str, Any], key: str, where: str, kind: type = float) -> Any:
    v = t[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{where}.{key}: expected a number, got {v!r}")
    return kind(v)


_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}

# [limits] keys that are not AdmissionLimits fields
_OTHER_LIMITS = {"drain_time": "drain_time", "log_interval": "shed_log_interval"}
_INT_LIMITS = {"max_calls_in_setup", "source_max_in_setup", "min_free_ports", "min_free_fds",
               "retry_after", "drain_retry_after", "max_sources", "overload_samples"}


def _limit(key: str, value: object, where: str, kw: dict[str, Any],
           limits_kw: dict[str, Any]) -> None:
    """One [limits] key (from the TOML or the environment), checked."""
    known = set(AdmissionLimits.__dataclass_fields__) | set(_OTHER_LIMITS)
    if key not in known:
        raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
    if key == "trusted_sources":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
            raise ConfigError(f"{where}: expected a list of IP addresses or networks (CIDR)")
        entries = tuple(x.strip() for x in items if x.strip())
        try:
            parse_networks(entries)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        limits_kw[key] = entries
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: expected a number >= 0, got {value!r}")
    if key in _INT_LIMITS:
        if value != int(value):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        value = int(value)
    if key in _OTHER_LIMITS:
        kw[_OTHER_LIMITS[key]] = float(value)
    else:
        limits_kw[key] = value if key in _INT_LIMITS else float(value)


def load(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config from file, environment and flag overrides (see module docstring)."""
    env = os.environ if env is None else env
    kw: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None

    sip = data.get("sip", {})
    if "host" in sip:
        kw["sip_host"] = str(sip["host"])
    if "port" in sip:
        kw["sip_port"] = _num(sip, "port", "sip", int)
    if "transports" in sip:
        tr = tuple(str(x).lower() for x in sip["transports"])
        if any(x not in ("udp", "tcp") for x in tr):
            raise ConfigError("sip.transports: a list of 'udp' and/or 'tcp' (empty: SIP over "
                              "TLS only)")
        kw["sip_transports"] = tr
    if "advertised_host" in sip:
        kw["advertised_host"] = str(sip["advertised_host"])
    if "tls_port" in sip:
        kw["sip_tls_port"] = _num(sip, "tls_port", "sip", int)
    tls = data.get("tls", {})
    for key in ("cert", "key"):
        if key in tls:
            if not isinstance(tls[key], str) or not tls[key]:
                raise ConfigError(f"tls.{key}: expected the path of a PEM file")
            kw[f"tls_{key}"] = Path(tls[key])
    security = data.get("security", {})
    for key in ("tls", "srtp"):
        if key in security:
            kw[f"security_{key}"] = _policy(security[key], f"security.{key}")
    if "udp_rcvbuf" in sip:
        kw["sip_udp_rcvbuf"] = _num(sip, "udp_rcvbuf", "sip", int)
    limits_kw: dict[str, Any] = {}
    for key, value in data.get("limits", {}).items():
        _limit(key, value, f"limits.{key}", kw, limits_kw)
    rtp = data.get("rtp", {})
    if "ports" in rtp:
        kw["rtp_port_min"], kw["rtp_port_max"] = parse_port_range(str(rtp["ports"]), "rtp.ports")
    if "timeout" in rtp:
        kw["rtp_timeout"] = _num(rtp, "timeout", "rtp")
    http = data.get("http", {})
    if "host" in http:
        kw["http_host"] = str(http["host"])
    if "port" in http:
        kw["http_port"] = _num(http, "port", "http", int)
    if "token" in http:
        if not isinstance(http["token"], str):
            raise ConfigError("http.token: expected a string")
        kw["api_token"] = http["token"]
    if "tls" in http:
        if http["tls"] == "self-signed":
            kw["http_self_signed"] = True
        elif not isinstance(http["tls"], bool):
            raise ConfigError('http.tls: expected true, false or "self-signed"')
        else:
            kw["http_tls"] = http["tls"]
    media = data.get("media", {})
    if "dir" in media:
        kw["media_dir"] = Path(media["dir"])
    if media.get("cache_dir"):
        kw["cache_dir"] = Path(media["cache_dir"])
    if "codecs" in media:
        kw["codecs"] = _codec_list(media["codecs"], "media.codecs")
    if "codec_priority" in media:
        kw["codec_priority"] = str(media["codec_priority"])
    if "opus_bitrate" in media:
        kw["opus_bitrate"] = _num(media, "opus_bitrate", "media", int)
    if "opus_complexity" in media:
        kw["opus_complexity"] = _num(media, "opus_complexity", "media", int)
    if "voice" in data.get("tts", {}):
        kw["tts_voice"] = str(data["tts"]["voice"])
    conference = data.get("conference", {})
    if "talk_gate" in conference:
        if not isinstance(conference["talk_gate"], bool):
            raise ConfigError("conference.talk_gate: expected true or false")
        kw["talk_gate"] = conference["talk_gate"]
    if "talk_gate_hang_ms" in conference:
        kw["talk_gate_hang_ms"] = _num(conference, "talk_gate_hang_ms", "conference", int)
    if "talk_gate_level_dbfs" in conference:
        kw["talk_gate_level_dbfs"] = _num(conference, "talk_gate_level_dbfs", "conference")
    cluster = data.get("cluster", {})
    for key, attr in (("redis", "cluster_redis"), ("node_id", "cluster_node_id"),
                      ("advertise", "cluster_advertise")):
        if key in cluster:
            if not isinstance(cluster[key], str):
                raise ConfigError(f"cluster.{key}: expected a string")
            kw[attr] = cluster[key]
    if "workers" in cluster:
        kw["workers"] = _num(cluster, "workers", "cluster", int)
    if "timeout" in data.get("webhooks", {}):
        kw["webhook_timeout"] = _num(data["webhooks"], "timeout", "webhooks")
    if "max_body" in data.get("webhooks", {}):
        kw["webhook_max_body"] = _num(data["webhooks"], "max_body", "webhooks", int)
    if data.get("webhooks", {}).get("ca_file"):
        if not isinstance(data["webhooks"]["ca_file"], str):
            raise ConfigError("webhooks.ca_file: expected the path of a PEM CA bundle")
        kw["webhook_ca_file"] = Path(data["webhooks"]["ca_file"])
    for key, cast in _WS_KEYS.items():
        if key in data.get("webhooks", {}):
            kw[key] = _num(data["webhooks"], key, "webhooks", cast)
    _limit_keys(data, env, kw)
    _outbound_keys(data, env, kw)
    if "apps" in data:
        if not isinstance(data["apps"], list) or not data["apps"]:
            raise ConfigError("apps: expected one or more [[apps]] tables")
        kw["apps"] = tuple(_app_from_table(t, i) for i, t in enumerate(data["apps"]))

    # Environment variables.
    def env_int(name: str) -> int | None:
        v = env.get(name)
        if v is None or v == "":
            return None
        try:
            return int(v)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {v!r}") from None

    if env.get("CONFROOM_SIP_HOST"):
        kw["sip_host"] = env["CONFROOM_SIP_HOST"]
    if (p := env_int("CONFROOM_SIP_PORT")) is not None:
        kw["sip_port"] = p
    if (p := env_int("CONFROOM_SIP_TLS_PORT")) is not None:
        kw["sip_tls_port"] = p
    if env.get("CONFROOM_TLS_CERT"):
        kw["tls_cert"] = Path(env["CONFROOM_TLS_CERT"])
    if env.get("CONFROOM_TLS_KEY"):
        kw["tls_key"] = Path(env["CONFROOM_TLS_KEY"])
    if env.get("CONFROOM_HTTP_SELF_SIGNED"):
        value = env["CONFROOM_HTTP_SELF_SIGNED"].strip().lower()
        if value not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError(f"CONFROOM_HTTP_SELF_SIGNED: expected 1/true or 0/false, got "
                              f"{value!r}")
        kw["http_self_signed"] = value in ("1", "true", "yes")
    if env.get("CONFROOM_RTP_PORTS"):
        kw["rtp_port_min"], kw["rtp_port_max"] = parse_port_range(
            env["CONFROOM_RTP_PORTS"], "CONFROOM_RTP_PORTS"
        )
    if env.get("CONFROOM_RTP_TIMEOUT"):
        try:
            kw["rtp_timeout"] = float(env["CONFROOM_RTP_TIMEOUT"])
        except ValueError:
            raise ConfigError("CONFROOM_RTP_TIMEOUT: expected a number") from None
    if (p := env_int("CONFROOM_HTTP_PORT")) is not None:
        kw["http_port"] = p
    if env.get("CONFROOM_API_TOKEN"):
        kw["api_token"] = env["CONFROOM_API_TOKEN"]
    if env.get("CONFROOM_MEDIA_DIR"):
        kw["media_dir"] = Path(env["CONFROOM_MEDIA_DIR"])
    if env.get("CONFROOM_CODECS"):
        kw["codecs"] = _codec_list(env["CONFROOM_CODECS"], "CONFROOM_CODECS")
    if env.get("CONFROOM_CODEC_PRIORITY"):
        kw["codec_priority"] = env["CONFROOM_CODEC_PRIORITY"].strip().lower()
    if (p := env_int("CONFROOM_OPUS_BITRATE")) is not None:
        kw["opus_bitrate"] = p
    if (p := env_int("CONFROOM_OPUS_COMPLEXITY")) is not None:
        kw["opus_complexity"] = p
    if (n := env_int("CONFROOM_WEBHOOK_MAX_BODY")) is not None:
        kw["webhook_max_body"] = n
    if env.get("CONFROOM_WEBHOOK_CA_FILE"):
        kw["webhook_ca_file"] = Path(env["CONFROOM_WEBHOOK_CA_FILE"])
    for key, cast in _WS_KEYS.items():
        name = "CONFROOM_" + key.upper()
        if env.get(name):
            try:
                kw[key] = cast(env[name])
            except ValueError:
                raise ConfigError(f"{name}: expected {'an integer' if cast is int else 'a number'}"
                                  f", got {env[name]!r}") from None
    if (p := env_int("CONFROOM_SIP_UDP_RCVBUF")) is not None:
        kw["sip_udp_rcvbuf"] = p
    for name, attr in (("CONFROOM_REDIS", "cluster_redis"), ("CONFROOM_NODE_ID", "cluster_node_id"),
                       ("CONFROOM_CLUSTER_ADVERTISE", "cluster_advertise")):
        if env.get(name):
            kw[attr] = env[name]
    if (n := env_int("CONFROOM_WORKERS")) is not None:
        kw["workers"] = n
    if env.get("CONFROOM_REUSE_PORT") == "1":  # set by the --workers supervisor for its workers
        kw["reuse_port"] = True
    if env.get("CONFROOM_WORKER_SLOT"):  # likewise: "i/n", with CONFROOM_WORKER_DIR
        idx, sep, cnt = env["CONFROOM_WORKER_SLOT"].partition("/")
        if not (sep and idx.isdigit() and cnt.isdigit() and int(idx) < int(cnt) <= 256):
            raise ConfigError(f"CONFROOM_WORKER_SLOT: expected index/count, got "
                              f"{env['CONFROOM_WORKER_SLOT']!r}")
        if not env.get("CONFROOM_WORKER_DIR"):
            raise ConfigError("CONFROOM_WORKER_SLOT needs CONFROOM_WORKER_DIR")
        kw["worker_index"], kw["worker_count"] = int(idx), int(cnt)
        kw["worker_dir"] = env["CONFROOM_WORKER_DIR"]
    if env.get("CONFROOM_TALK_GATE"):
        flag = env["CONFROOM_TALK_GATE"].strip().lower()
        if flag not in _BOOLS:
            raise ConfigError(f"CONFROOM_TALK_GATE: expected true or false, got {flag!r}")
        kw["talk_gate"] = _BOOLS[flag]
    if (p := env_int("CONFROOM_TALK_GATE_HANG_MS")) is not None:
        kw["talk_gate_hang_ms"] = p
    if env.get("CONFROOM_TALK_GATE_LEVEL_DBFS"):
        try:
            kw["talk_gate_level_dbfs"] = float(env["CONFROOM_TALK_GATE_LEVEL_DBFS"])
        except ValueError:
            raise ConfigError("CONFROOM_TALK_GATE_LEVEL_DBFS: expected a number") from None
    for name, value in env.items():
        limit_key = ("drain_time" if name == "CONFROOM_DRAIN_TIME"
                     else name[len("CONFROOM_LIMITS_"):].lower()
                     if name.startswith("CONFROOM_LIMITS_") else None)
        if limit_key is None or value == "":
            continue
        if limit_key == "trusted_sources":
            _limit(limit_key, value, name, kw, limits_kw)
            continue
        try:
            number: float = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        _limit(limit_key, number, name, kw, limits_kw)
    if (ov_drain := (overrides or {}).get("drain_time")) is not None:
        kw["drain_time"] = float(ov_drain)
    kw["limits"] = replace(AdmissionLimits(), **limits_kw)

    cfg = Config(**kw)
    app_over: dict[str, Any] = {}
    if env.get("CONFROOM_APP"):
        app_over.update(app_source(env["CONFROOM_APP"], "CONFROOM_APP"))
    if env.get("CONFROOM_WEBHOOK_SECRET"):
        app_over["webhook_secret"] = env["CONFROOM_WEBHOOK_SECRET"]

    # Command-line flags.
    ov = dict(overrides or {})
    if ov.get("outbound_allowed_domains") is not None:
        ov["outbound_allowed_domains"] = _domains(ov["outbound_allowed_domains"],
                                                  "--outbound-allowed-domains")
    if ov.get("app"):
        app_over.update(app_source(str(ov.pop("app")), "--app"))
    ov.pop("app", None)
    if ov.get("rtp_ports"):
        ov["rtp_port_min"], ov["rtp_port_max"] = parse_port_range(
            str(ov.pop("rtp_ports")), "--rtp-ports"
        )
    ov.pop("rtp_ports", None)
    ov.pop("drain_time", None)  # applied above (0 is a value)
    if ov.get("codecs") is not None:
        ov["codecs"] = _codec_list(ov["codecs"], "--codecs")
    cfg = replace(cfg, **{k: v for k, v in ov.items() if v is not None})
    if app_over:
        first = replace(cfg.apps[0], **app_over)
        cfg = replace(cfg, apps=(first, *cfg.apps[1:]))
    validate(cfg)
    return cfg


def _codec_list(value: object, where: str) -> tuple[str, ...]:
    """A codec list: a TOML array of names or a comma-separated string (env, CLI)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where}: expected a list of codec names")
    names = tuple(str(n).strip().upper() for n in items if str(n).strip())
    unknown = [n for n in names if n not in CODECS]
    if unknown or not names:
        raise ConfigError(
            f"{where}: {'unknown codec(s) ' + ', '.join(unknown) if unknown else 'empty list'}"
            f" (choose from {', '.join(CODECS)})"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a codec is listed twice in {list(names)}")
    return names


def validate(cfg: Config) -> None:
    if not (0 <= cfg.sip_port <= 65535):
        raise ConfigError(f"sip.port {cfg.sip_port} is out of range")
    if not (0 <= cfg.http_port <= 65535):
        raise ConfigError(f"http.port {cfg.http_port} is out of range")
    _validate_tls(cfg)
    if cfg.http_port > 0 and not cfg.api_token.strip():
        raise ConfigError(
            "the REST API is enabled (http.port / --http-port) but has no bearer token: set "
            "[http] token in the config file or CONFROOM_API_TOKEN (the API is never served "
            "without authentication)"
        )
    if cfg.rtp_port_max - cfg.rtp_port_min < 1:
        raise ConfigError("rtp.ports: the range needs at least two ports")
    if cfg.rtp_timeout < 0:
        raise ConfigError("rtp.timeout must be >= 0")
    if cfg.webhook_max_body < 1:
        raise ConfigError(
            f"webhooks.max_body (CONFROOM_WEBHOOK_MAX_BODY, --webhook-max-body) must be a "
            f"positive number of bytes, not {cfg.webhook_max_body}"
        )
    _validate_limits(cfg)
    if cfg.webhook_ca_file is not None:
        from confroom.tls import TlsError, client_context

        try:
            client_context(cfg.webhook_ca_file)
        except TlsError as e:
            raise ConfigError(f"webhooks.ca_file (CONFROOM_WEBHOOK_CA_FILE, --webhook-ca-file): "
                              f"{e}") from None
    if cfg.ws_ack_timeout <= 0 or cfg.ws_handshake_timeout <= 0:
        raise ConfigError("webhooks.ws_ack_timeout and webhooks.ws_handshake_timeout "
                          "(CONFROOM_WS_ACK_TIMEOUT, CONFROOM_WS_HANDSHAKE_TIMEOUT) must be > 0")
    if cfg.ws_max_payload < 1024:
        raise ConfigError(f"webhooks.ws_max_payload (CONFROOM_WS_MAX_PAYLOAD) must be at least "
                          f"1024 bytes, not {cfg.ws_max_payload}")
    if not 0 <= cfg.ws_max_reconnects <= 5:
        raise ConfigError(f"webhooks.ws_max_reconnects (CONFROOM_WS_MAX_RECONNECTS) must be "
                          f"0-5 (jambonz's cap), not {cfg.ws_max_reconnects}")
    if cfg.drain_time < 0:
        raise ConfigError("limits.drain_time (--drain-time) must be >= 0")
    if cfg.sip_udp_rcvbuf < 0:
        raise ConfigError("sip.udp_rcvbuf must be >= 0 (0 = the system default)")
    if cfg.shed_log_interval <= 0:
        raise ConfigError("limits.log_interval must be > 0")
    if cfg.outbound_max_concurrent_calls < 0:
        raise ConfigError("outbound.max_concurrent_calls must be >= 0 (0: no outbound calls)")
    if cfg.outbound_calls_per_second <= 0:
        raise ConfigError("outbound.calls_per_second must be > 0")
    names = [t.name for t in cfg.trunks]
    if len(set(names)) != len(names):
        raise ConfigError(f"trunks: duplicate trunk names in {names}")
    if not (0 <= cfg.talk_gate_hang_ms <= 10000):
        raise ConfigError(
            f"conference.talk_gate_hang_ms (CONFROOM_TALK_GATE_HANG_MS) must be 0-10000 ms, "
            f"not {cfg.talk_gate_hang_ms}"
        )
    if not (-96.0 <= cfg.talk_gate_level_dbfs <= 0.0):
        raise ConfigError(
            f"conference.talk_gate_level_dbfs (CONFROOM_TALK_GATE_LEVEL_DBFS) must be "
            f"-96..0 dBFS, not {cfg.talk_gate_level_dbfs}"
        )
    if cfg.codec_priority not in ("caller", "server"):
        raise ConfigError(
            f"media.codec_priority (CONFROOM_CODEC_PRIORITY, --codec-priority) must be "
            f"\"caller\" or \"server\", not {cfg.codec_priority!r}"
        )
    try:
        OpusConfig(cfg.opus_bitrate, cfg.opus_complexity).validate()
    except ValueError as e:
        raise ConfigError(f"media.opus_bitrate / media.opus_complexity: {e}") from None
    _validate_cluster(cfg)
    for app in cfg.apps:
        if (app.call_hook is None) == (app.verbs_file is None):
            raise ConfigError(f"app {app.name!r}: needs exactly one of a call hook or a verb file")


_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _validate_cluster(cfg: Config) -> None:
    if not 1 <= cfg.workers <= 256:
        raise ConfigError(f"cluster.workers (CONFROOM_WORKERS, --workers) must be 1-256, "
                          f"not {cfg.workers}")
    if cfg.workers > 1 and cfg.sip_port == 0:
        raise ConfigError("--workers needs a fixed SIP port (sip.port, --sip-port), not 0")
    url = cfg.cluster_redis
    if url:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                "cluster.redis (CONFROOM_REDIS, --redis) must be a redis://, rediss:// or "
                "unix:// URL, e.g. redis://127.0.0.1:6379/0"
            )
    if cfg.cluster_node_id and not _NODE_ID.match(cfg.cluster_node_id):
        raise ConfigError(
            f"cluster.node_id (CONFROOM_NODE_ID, --node-id) {cfg.cluster_node_id!r}: 1-64 "
            "letters, digits, '.', '_' or '-'"
        )
    if cfg.cluster_advertise and cfg.cluster_advertise in ("0.0.0.0", "::"):
        raise ConfigError("cluster.advertise must be an address other nodes can reach, "
                          "not a wildcard")


def _validate_tls(cfg: Config) -> None:
    """[tls] files usable (loaded once here), TLS needed by what is asked of it."""
    if cfg.sip_tls_port and not (0 < cfg.sip_tls_port <= 65535):
        raise ConfigError(f"sip.tls_port {cfg.sip_tls_port} is out of range")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("[tls] needs both 'cert' and 'key' (or CONFROOM_TLS_CERT and "
                          "CONFROOM_TLS_KEY)")
    if cfg.tls_configured:
        from confroom.tls import TlsError, server_context

        assert cfg.tls_cert is not None and cfg.tls_key is not None
        try:
            server_context(cfg.tls_cert, cfg.tls_key)
        except TlsError as e:
            raise ConfigError(f"[tls]: {e}") from None
    elif cfg.sip_tls_port:
        raise ConfigError("sip.tls_port is set but [tls] cert and key are not")
    if not cfg.sip_transports and not cfg.sip_tls_port:
        raise ConfigError("sip.transports is empty and SIP over TLS is off: nothing to listen on")
    elif cfg.http_tls:
        raise ConfigError("http.tls = true needs [tls] cert and key")
    if cfg.http_self_signed and cfg.tls_configured:
        raise ConfigError('http.tls = "self-signed" (or CONFROOM_HTTP_SELF_SIGNED, '
                          "--http-self-signed) and [tls] cert/key are both set: choose one")
    if cfg.sip_tls_port == cfg.sip_port and cfg.sip_port and "tcp" in cfg.sip_transports:
        raise ConfigError(f"sip.tls_port {cfg.sip_tls_port} is the TCP port too")
    for name, policy in [("[security] tls", cfg.security_tls),
                         *((f"app {a.name!r} tls", a.tls) for a in cfg.apps)]:
        if policy == "required" and not cfg.sip_tls_port:
            raise ConfigError(f"{name} is \"required\" but SIP over TLS is off "
                              "(set sip.tls_port and [tls])")


def _validate_limits(cfg: Config) -> None:
    for section, key, attr, kind, _ in LIMIT_KEYS:
        value = getattr(cfg, attr)
        if kind is str:
            if any(not ch.isprintable() for ch in value) or len(value) > 200:
                raise ConfigError(f"{section}.{key}: printable text of at most 200 characters")
        elif value < 0:
            raise ConfigError(f"{section}.{key} must be >= 0, got {value}")
    if cfg.sip_max_message_bytes < 4096:
        raise ConfigError("sip.max_message_bytes must be at least 4096 (an INVITE with SDP "
                          "needs 1-3 kB)")
    for section, key in (("sip", "tcp_message_timeout"), ("http", "header_timeout"),
                         ("http", "body_timeout"), ("http", "keepalive_timeout")):
        if getattr(cfg, f"{section}_{key}") == 0:
            raise ConfigError(f"{section}.{key} must be > 0 (a slow client would hold its "
                              "connection forever)")
