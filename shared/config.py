"""Settings for every service, from the environment first (pydantic-settings).

Variables (docs/operations.md, "Configuration"): ``SWITCHBOARD_NATS_URL``, ``SWITCHBOARD_DATA_DIR``,
``SWITCHBOARD_DATABASE_URL``, ``OPENAI_API_KEY``, ``SWITCHBOARD_MODEL``, ``SWITCHBOARD_REALTIME_URL``,
``SWITCHBOARD_AGENT``, ``SWITCHBOARD_RECORDINGS_DIR``, ``SWITCHBOARD_LOCALMODEL_MODE``,
``SWITCHBOARD_LOCALMODEL_TOKEN``, ``SWITCHBOARD_PUBLIC_URL``, ``SWITCHBOARD_TWILIO_AUTH_TOKEN``,
``SWITCHBOARD_API_TOKEN``, ``SWITCHBOARD_JS_REPLICAS``, ``SWITCHBOARD_JS_MAX_AGE``, ``SWITCHBOARD_CARRIER_IDLE_S``,
``SWITCHBOARD_RECORDER_LOST_AFTER_S``, ``SWITCHBOARD_WEBHOOK_URL``, ``SWITCHBOARD_WEBHOOK_SECRET``,
``SWITCHBOARD_NATS_CREDS``, ``SWITCHBOARD_NATS_NKEY_SEED``, ``SWITCHBOARD_NATS_TLS_CA|CERT|KEY``,
``SWITCHBOARD_INSECURE_DEV``, ``SWITCHBOARD_TOKEN_SECRET``, ``SWITCHBOARD_OPENAI_WEBHOOK_SECRET``,
``SWITCHBOARD_OPENAI_API_URL``, ``SWITCHBOARD_LOCALMODEL_SIP_PORT``, ``SWITCHBOARD_LOCALMODEL_SIP_WEBHOOK_URL``,
``SWITCHBOARD_AUDIT_KEY`` (docs/security.md), the ports
``SWITCHBOARD_{GATEWAY,RECORDER,ANALYTICS,LOCALMODEL,NATS}_PORT``, the metrics ports
``SWITCHBOARD_SESSION_METRICS_PORT`` / ``SWITCHBOARD_TOOLS_METRICS_PORT`` and the standard ``OTEL_*`` variables (read by
the OpenTelemetry SDK itself).

An invalid value fails fast with :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ConfigError", "Settings", "get_settings", "load_settings"]

_DEFAULT_AGENT = Path("agents/receptionist.yaml")


class ConfigError(RuntimeError):
    """A setting has an invalid value; the message names the environment variable."""


class Settings(BaseSettings):
    """Every Switchboard setting. Field ``x`` is read from ``SWITCHBOARD_X`` unless noted."""

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore", frozen=True)

    nats_url: str | None = None
    """NATS URL; unset means ``switchboard up`` starts an embedded nats-server on ``nats_port``."""
    nats_port: int = Field(4333, ge=1, le=65535)
    """Port of the embedded nats-server (not 4222, which a system NATS often holds)."""
    host: str = "127.0.0.1"
    """Interface the HTTP services bind to (loopback by default)."""
    data_dir: Path = Path(".switchboard")
    """Where the embedded NATS store, the SQLite database and recordings live."""
    recordings_dir: Path | None = None
    """The recorder's cache of rendered ``<call id>.wav`` files; default ``<data_dir>/recordings``. Only a cache:
    a missing file is rendered again from the archive (on Kubernetes: a PersistentVolumeClaim)."""
    database_url: str | None = None
    """SQLAlchemy async URL; default ``sqlite+aiosqlite:///<data_dir>/switchboard.db``."""
    openai_api_key: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    """Set: sessions talk to OpenAI's Realtime endpoint."""
    model: str = "gpt-realtime"
    """Realtime model name (``?model=`` on the WebSocket URL)."""
    realtime_url: str | None = None
    """Overrides the Realtime endpoint (OpenAI or the local model)."""
    agent: Path = _DEFAULT_AGENT
    """Agent spec (YAML) the session service uses."""
    localmodel_mode: Literal["agent", "echo"] = "agent"
    localmodel_token: str | None = None
    gateway_port: int = Field(8080, ge=1, le=65535)
    gateway_audio_in_ms: int = Field(40, ge=20, le=200)
    """Caller audio per ``call.<id>.audio.in`` message (ms; 20 = one message per Twilio frame). The session
    appends at least 40 ms at a time, so the gateway holding the first 20 ms frame adds no latency end to end
    while halving the audio messages every service handles."""
    carrier_idle_s: float = Field(30.0, gt=0)
    """Seconds without inbound media on a started carrier stream (Twilio or browser) after which the gateway
    ends the call with end reason ``carrier_silent`` and closes the socket."""
    drain_s: float = Field(3600.0, ge=0)
    """Seconds a stopping gateway (SIGTERM) lets its live calls run before it ends them with ``drain_timeout``
    (or, for a Twilio call, hands the call to another gateway through TwiML ``<Redirect>``). The Kubernetes
    manifests set ``terminationGracePeriodSeconds`` to this + 30 s."""
    session_lost_s: float = Field(10.0, ge=0)
    """Seconds a Twilio call may go without an owning session instance (after one owned it: its owner died and no
    peer took it over) before the gateway tells the caller and ends it with ``session_lost``; 0 = never."""
    recorder_port: int = Field(8081, ge=1, le=65535)
    recorder_lost_after_s: float = Field(600.0, gt=0)
    """Seconds without any archived event after which the recorder ends an open call with reason ``lost``
    (its ``call.<id>.ended`` never arrived)."""
    analytics_port: int = Field(8082, ge=1, le=65535)
    """Port of the analytics service's API (``GET /kpis``, ``/metrics``; docs/analytics.md)."""
    session_metrics_port: int = Field(9464, ge=0, le=65535)
    """Port of the session service's Prometheus ``/metrics`` (it has no HTTP API; :mod:`shared.metrics_http`);
    0 turns it off."""
    tools_metrics_port: int = Field(9465, ge=0, le=65535)
    """Port of a tool worker's Prometheus ``/metrics`` (:mod:`shared.metrics_http`); 0 turns it off."""
    webhook_url: str | None = None
    """Set: every ended call's summary is POSTed here as signed JSON (docs/analytics.md, "Post-call webhook")."""
    webhook_secret: str | None = None
    """HMAC-SHA256 key of the webhook's ``Switchboard-Signature`` header; required with ``webhook_url`` (without
    it nothing is sent and ``switchboard status`` shows the webhook as misconfigured)."""
    localmodel_port: int = Field(8765, ge=1, le=65535)
    public_url: str | None = None
    """The gateway's public base URL (https://...), for TwiML and Twilio signature checks."""
    twilio_auth_token: str | None = None
    twilio_account_sid: str | None = None
    """Twilio Account SID (``AC…``); with the auth token, transfers update the live call through Twilio's REST API."""
    twilio_api_url: str | None = None
    """Base URL of Twilio's REST API (unset: the SDK's, ``https://api.twilio.com``; tests point it at a fake)."""
    telnyx_api_key: str | None = None
    """Telnyx API v2 key; set: transfers go through Call Control ``actions/transfer``."""
    telnyx_api_url: str | None = None
    """Base URL of Telnyx's REST API (unset: the SDK's, ``https://api.telnyx.com/v2``; tests point it at a fake)."""
    telnyx_public_key: str | None = None
    """Telnyx's Ed25519 webhook public key (base64, Mission Control → Keys & Credentials → Public Key); without
    it every Telnyx request is refused (unless ``insecure_dev``)."""
    vonage_signature_secret: str | None = None
    """The Vonage account's signature secret (HS256 key of signed webhooks); without it every Vonage request
    is refused (unless ``insecure_dev``)."""
    plivo_auth_token: str | None = None
    """The Plivo (sub)account auth token (key of ``X-Plivo-Signature-V3``); without it every Plivo request is
    refused (unless ``insecure_dev``)."""
    vonage_application_id: str | None = None
    """The Vonage Voice application's id; with ``vonage_private_key``, call control (transfer, hangup, DTMF) and
    outbound calls go through the Voice API with an application JWT."""
    vonage_private_key: str | None = None
    """The application's RSA private key: PEM text, or the path of a file holding it."""
    vonage_api_url: str | None = None
    """Base URL of the Vonage Voice API (unset: ``https://api.nexmo.com``; tests point it at a fake)."""
    plivo_auth_id: str | None = None
    """The Plivo (sub)account auth id (``MA…``/``SA…``); with ``plivo_auth_token``, call control and outbound calls
    go through Plivo's Voice API."""
    plivo_api_url: str | None = None
    """Base URL of Plivo's API (unset: ``https://api.plivo.com``; tests point it at a fake)."""
    telnyx_account_sid: str | None = None
    """The Telnyx account id that outbound calls are placed under (TeXML ``/texml/Accounts/{id}/Calls``)."""
    telnyx_texml_app_id: str | None = None
    """The TeXML application (``ApplicationSid``) outbound Telnyx calls belong to."""
    outbound_from: str | None = None
    """Default caller ID (E.164) of outbound calls (``POST /calls/outbound`` without ``from``)."""
    openai_webhook_secret: str | None = None
    """The OpenAI project's webhook signing secret (``whsec_…``): the gateway verifies ``realtime.call.incoming``
    (``POST /openai/webhook``) with it, and the local model signs its simulated SIP calls' webhooks with it;
    without it the gateway refuses every OpenAI webhook."""
    openai_api_url: str | None = None
    """Base URL of OpenAI's REST API for SIP calls (``/realtime/calls/{call_id}/accept`` …); its sideband
    WebSocket is ``<this, ws(s)://>/realtime?call_id=``. Unset: ``https://api.openai.com/v1`` with
    ``OPENAI_API_KEY``, else the local model's SIP API (``http://127.0.0.1:<localmodel_sip_port>/v1``)."""
    localmodel_sip_port: int = Field(0, ge=0, le=65535)
    """Port of the local model's simulated SIP side (Realtime calls API, sideband WebSocket, SIP legs); 0: off."""
    localmodel_sip_webhook_url: str | None = None
    """Where the local model POSTs ``realtime.call.incoming``; default the gateway's
    ``http://127.0.0.1:<gateway_port>/openai/webhook``."""
    api_token: str | None = None
    js_replicas: int = Field(1, ge=1, le=5)
    js_max_age: float = Field(7 * 24 * 3600.0, gt=0)
    """Seconds a JetStream stream keeps a message (CALLS and RT); TRACES keeps at most one hour."""
    js_duplicate_window: float = Field(120.0, gt=0)
    """Seconds of ``Nats-Msg-Id`` de-duplication history in each stream."""
    nats_creds: Path | None = None
    """A NATS ``.creds`` file (decentralized JWT user); wins over ``nats_nkey_seed``."""
    nats_nkey_seed: str | None = None
    """This service's NATS nkey user seed (``SU…``) or a file holding it (``switchboard up``: a 0600 file)."""
    nats_tls_ca: Path | None = None
    """CA bundle that signed the NATS server certificate; set: connect over TLS and verify the server."""
    nats_tls_cert: Path | None = None
    """Client certificate for NATS TLS (mutual TLS), with ``nats_tls_key``."""
    nats_tls_key: Path | None = None
    insecure_dev: bool = False
    """The only way to accept unsigned carrier requests (development on loopback; logged as a warning)."""
    token_secret: str | None = None
    """Shared secret that signs browser tokens, the same on every gateway replica (``switchboard up`` makes one)."""
    audit_key: str | None = None
    """Ed25519 private key (32 bytes, hex) signing the recorder's chain checkpoints; the public key verifies."""
    archive_key: str | None = None
    """Key-encryption key (32 bytes, 64 hex digits or base64) wrapping the per-call data keys that seal caller
    content in the archive; unset: ``<data_dir>/auth/archive_key`` (created on first use)."""
    retention_days: float | None = Field(None, gt=0)
    """Days the recorder keeps an ended call before erasing it, for agents whose spec sets no
    ``retention_days``; unset: kept until erased on request."""
    retention_interval_s: float = Field(3600.0, gt=0)
    """Seconds between the recorder's retention sweeps."""
    redaction: bool = False
    """Redact card numbers, phone numbers, e-mail addresses and ``redaction_patterns`` in everything the session
    logs (Realtime events, log lines); an agent spec's ``redaction.enabled`` overrides it per agent."""
    redaction_patterns: list[str] = Field(default_factory=list)
    """Extra regular expressions to redact (``SWITCHBOARD_REDACTION_PATTERNS``, a JSON array), for every agent."""
    redaction_region: str = Field("US", pattern=r"^[A-Za-z]{2}$")
    """ISO 3166 region for phone numbers written without a country code."""
    capture_key: str | None = None
    """AES-256 key (32 bytes, hex) sealing keypad captures for their tool (:mod:`shared.sealed`); the session and
    the tool worker share it (``switchboard up`` makes one). Unset: keypad capture states refuse entries."""

    @field_validator("nats_url", "realtime_url", "public_url", "database_url", "openai_api_key",
                     "localmodel_token", "twilio_auth_token", "twilio_account_sid", "twilio_api_url",
                     "telnyx_api_key", "telnyx_api_url", "telnyx_public_key",
                     "vonage_signature_secret", "plivo_auth_token", "vonage_application_id", "vonage_private_key",
                     "vonage_api_url", "plivo_auth_id", "plivo_api_url", "telnyx_account_sid", "telnyx_texml_app_id",
                     "outbound_from", "api_token", "webhook_url", "webhook_secret",
                     "nats_creds", "nats_nkey_seed", "nats_tls_ca", "nats_tls_cert", "nats_tls_key", "token_secret",
                     "audit_key", "archive_key", "retention_days", "capture_key", "openai_webhook_secret",
                     "openai_api_url", "localmodel_sip_webhook_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def effective_database_url(self) -> str:
        """The database URL in force: the setting, else SQLite in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'switchboard.db').resolve()}"

    @property
    def effective_recordings_dir(self) -> Path:
        """Where the recorder caches recordings: the setting, else ``<data_dir>/recordings``."""
        return self.recordings_dir or self.data_dir / "recordings"

    @property
    def effective_nats_url(self) -> str:
        """The NATS URL in force: the setting, else the embedded server's loopback URL."""
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"

    def nats_options(self, identity: str | None = None) -> dict[str, Any]:
        """``nats.connect`` keyword arguments for credentials, TLS and ``identity``'s inbox prefix
        (:func:`shared.natsauth.client_options`)."""
        from shared.natsauth import client_options

        return client_options(creds=self.nats_creds, nkey_seed=self.nats_nkey_seed, tls_ca=self.nats_tls_ca,
                              tls_cert=self.nats_tls_cert, tls_key=self.nats_tls_key, identity=identity)

    @property
    def effective_realtime_url(self) -> str:
        """The Realtime WebSocket URL: the override, else OpenAI with a key, else the local model."""
        if self.realtime_url:
            return self.realtime_url
        if self.openai_api_key:
            return f"wss://api.openai.com/v1/realtime?model={self.model}"
        return f"ws://127.0.0.1:{self.localmodel_port}/v1/realtime?model={self.model}"

    @property
    def effective_openai_api_url(self) -> str:
        """The REST base of the Realtime calls API (SIP calls): the override, else OpenAI with a key, else the
        local model's SIP side."""
        if self.openai_api_url:
            return self.openai_api_url.rstrip("/")
        if self.openai_api_key:
            return "https://api.openai.com/v1"
        return f"http://127.0.0.1:{self.localmodel_sip_port}/v1"

    @property
    def effective_sip_webhook_url(self) -> str:
        """Where the local model sends ``realtime.call.incoming``: the setting, else this host's gateway."""
        return self.localmodel_sip_webhook_url or f"http://127.0.0.1:{self.gateway_port}/openai/webhook"

    @property
    def uses_local_model(self) -> bool:
        """True when neither ``OPENAI_API_KEY`` nor ``SWITCHBOARD_REALTIME_URL`` is set."""
        return not self.openai_api_key and not self.realtime_url


def _variable_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    return "OPENAI_API_KEY" if field == "openai_api_key" else f"SWITCHBOARD_{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Build :class:`Settings` from the environment (and keyword overrides, for tests).

    Raises:
        ConfigError: a variable holds an invalid value; the message names it and says why.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{_variable_name(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (see :func:`load_settings`)."""
    return load_settings()
