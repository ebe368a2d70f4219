"""Request authentication at the edges, failing closed: Twilio signatures, browser tokens and cookie sessions.

Twilio (https://www.twilio.com/docs/usage/security#validating-requests): ``X-Twilio-Signature`` is checked with
the official ``twilio.request_validator.RequestValidator`` over the public URL (``SWITCHBOARD_PUBLIC_URL`` + path
and query when set — behind an ingress the request's own URL is not what Twilio signed — else the request URL)
and the POST form parameters. The Media Streams WebSocket upgrade is signed over its ``wss://`` URL with no
parameters. Without ``SWITCHBOARD_TWILIO_AUTH_TOKEN`` every Twilio request is refused; only
``SWITCHBOARD_INSECURE_DEV=true`` (development on loopback, logged as a warning) accepts unsigned ones.

Browser tokens: ``POST /browser/token`` mints ``<expiry unix s>.<nonce>.<HMAC-SHA256>`` (URL-safe base64),
valid for :data:`TOKEN_TTL_S` seconds and usable once. The HMAC key derives from ``SWITCHBOARD_TOKEN_SECRET``,
shared by every gateway replica, so a token minted by one is accepted by all; "used once" is a NATS KV
``create`` of the nonce (:class:`KvNonces`, bucket ``switchboard_browser_tokens`` with a TTL), which succeeds on
exactly one replica (https://docs.nats.io/nats-concepts/jetstream/key-value-store: ``create`` puts only when
the key does not exist). The endpoint itself requires ``SWITCHBOARD_API_TOKEN`` as a Bearer token, or the
session cookie (:data:`SESSION_COOKIE`, signed with the same key, :data:`SESSION_TTL_S`) it sets on such a call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from twilio.request_validator import RequestValidator

from shared.natsauth import BROWSER_TOKENS_BUCKET

__all__ = ["SESSION_COOKIE", "SESSION_TTL_S", "TOKEN_TTL_S", "BrowserTokens", "KvNonces", "LocalNonces",
           "Nonces", "TokenError", "TwilioSignatures", "public_url_for"]

log = logging.getLogger("services.gateway")

TOKEN_TTL_S: Final = 60
"""Seconds a browser token stays valid (it only has to survive the page opening its socket)."""
SESSION_TTL_S: Final = 12 * 3600
"""Seconds a browser session cookie stays valid."""
SESSION_COOKIE: Final = "switchboard_session"
NONCE_BUCKET: Final = BROWSER_TOKENS_BUCKET


def public_url_for(public_base: str | None, scheme: str, host: str, path: str, query: str = "") -> str:
    """The URL a carrier used for this request: ``public_base`` (scheme/host, path prefix) + path + query.

    ``scheme`` is the request's own (``http``/``https``/``ws``/``wss``); with a public base the scheme is
    taken from it and mapped to ``ws``/``wss`` for WebSocket requests.
    """
    websocket = scheme in ("ws", "wss")
    if public_base:
        base = urlsplit(public_base.rstrip("/"))
        secure = base.scheme in ("https", "wss")
        new_scheme = ("wss" if secure else "ws") if websocket else ("https" if secure else "http")
        return urlunsplit((new_scheme, base.netloc, base.path + path, query, ""))
    return urlunsplit((scheme, host, path, query, ""))


class TwilioSignatures:
    """Checks ``X-Twilio-Signature``; fails closed: no auth token means every request is refused, unless
    ``insecure_dev`` (then everything is accepted)."""

    def __init__(self, auth_token: str | None, *, insecure_dev: bool = False) -> None:
        self.insecure_dev = insecure_dev
        self.enabled = not insecure_dev
        self._token = auth_token
        self._validator = RequestValidator(auth_token or "")

    def valid(self, url: str, params: Mapping[str, str], signature: str | None) -> bool:
        """True when ``signature`` is Twilio's HMAC-SHA1 of ``url`` + sorted ``params`` under the auth token
        (always False without a token), or in insecure development mode."""
        if self.insecure_dev:
            return True
        if not self._token or not signature:
            return False
        return bool(self._validator.validate(url, dict(params), signature))


class TokenError(ValueError):
    """A browser token that is malformed, forged, expired or already used."""


class Nonces(Protocol):
    """Where used token nonces are remembered (until they expire)."""

    async def claim(self, nonce: str, expiry: float, now: float) -> bool:
        """Mark ``nonce`` (valid until ``expiry``, unix s) used at ``now``; False when it already was."""


class LocalNonces:
    """Used nonces in this process only (one gateway replica; tests)."""

    def __init__(self) -> None:
        self._used: dict[str, float] = {}

    async def claim(self, nonce: str, expiry: float, now: float) -> bool:
        """Mark ``nonce`` used; False when it already was."""
        self._used = {n: exp for n, exp in self._used.items() if exp >= now}
        if nonce in self._used:
            return False
        self._used[nonce] = expiry
        return True


class KvNonces:
    """Used nonces in a NATS KV bucket shared by every replica; entries expire after ``ttl_s`` seconds.

    Raises (from :meth:`claim`) the nats-py errors of an unreachable JetStream; the token is refused then.
    """

    def __init__(self, js: JetStreamContext, *, bucket: str = NONCE_BUCKET, ttl_s: float = 2 * TOKEN_TTL_S) -> None:
        self.js = js
        self.bucket = bucket
        self.ttl_s = ttl_s
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    async def _store(self) -> KeyValue:
        async with self._lock:
            if self._kv is None:
                try:
                    self._kv = await self.js.key_value(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    self._kv = await self.js.create_key_value(KeyValueConfig(
                        bucket=self.bucket, ttl=self.ttl_s, storage=StorageType.FILE, history=1))
            return self._kv

    async def claim(self, nonce: str, expiry: float, now: float) -> bool:
        """Create key ``nonce``; False when it exists (used on this or another replica)."""
        kv = await self._store()
        try:
            await kv.create(nonce, str(int(expiry)).encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True


class BrowserTokens:
    """Mints and checks single-use, short-lived HMAC tokens for ``WS /browser``, and browser session cookies.

    ``secret`` is ``SWITCHBOARD_TOKEN_SECRET`` (the same on every replica); None: a random key for this process
    only (one replica). ``used`` remembers spent nonces (default: this process).
    """

    def __init__(self, secret: str | None = None, ttl_s: int = TOKEN_TTL_S, *, used: Nonces | None = None) -> None:
        material = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"switchboard-browser-token\x00" + material).digest()
        self.ttl_s = ttl_s
        self.used: Nonces = used or LocalNonces()

    def _sign(self, body: str, purpose: str = "token") -> str:
        mac = hmac.new(self._key, f"{purpose}\x00{body}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def _mint(self, ttl_s: float, purpose: str, now: float | None) -> tuple[str, int]:
        expiry = int((now if now is not None else time.time()) + ttl_s)
        body = f"{expiry}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._sign(body, purpose)}", expiry

    def _verify(self, token: str | None, purpose: str, now: float) -> tuple[str, int]:
        if not token or token.count(".") != 2 or len(token) > 200:
            raise TokenError("missing or malformed token")
        expiry_s, nonce, mac = token.split(".")
        if not hmac.compare_digest(mac, self._sign(f"{expiry_s}.{nonce}", purpose)):
            raise TokenError("bad token signature")
        if not expiry_s.isdigit() or int(expiry_s) < now:
            raise TokenError("token expired")
        return nonce, int(expiry_s)

    def mint(self, now: float | None = None) -> tuple[str, int]:
        """A new token and its expiry (unix seconds)."""
        return self._mint(self.ttl_s, "token", now)

    async def check(self, token: str | None, now: float | None = None) -> None:
        """Accept ``token`` once (on any replica sharing the secret and the nonce store).

        Raises:
            TokenError: missing, malformed, bad signature, expired, or used before.
        """
        await self._claim(token, "token", now)

    async def _claim(self, token: str | None, purpose: str, now: float | None) -> None:
        now = now if now is not None else time.time()
        nonce, expiry = self._verify(token, purpose, now)
        if not await self.used.claim(nonce, float(expiry), now):
            raise TokenError("token already used")

    def mint_stream(self, now: float | None = None) -> tuple[str, int]:
        """A carrier stream token (valid :data:`TOKEN_TTL_S` s, single use, never a browser token): the
        gateway puts it in the media URL of a signed webhook answer (Telnyx, Vonage, Plivo)."""
        return self._mint(self.ttl_s, "stream", now)

    async def check_stream(self, token: str | None, now: float | None = None) -> None:
        """Accept a carrier stream token once (on any replica sharing the secret and the nonce store).

        Raises:
            TokenError: missing, malformed, bad signature, expired, or used before.
        """
        await self._claim(token, "stream", now)

    def mint_session(self, now: float | None = None) -> tuple[str, int]:
        """A browser session cookie value (valid :data:`SESSION_TTL_S` s, reusable) and its expiry."""
        return self._mint(SESSION_TTL_S, "session", now)

    def session_valid(self, value: str | None, now: float | None = None) -> bool:
        """True when ``value`` is a session cookie this secret signed and it has not expired."""
        try:
            self._verify(value, "session", now if now is not None else time.time())
        except TokenError:
            return False
        return True
