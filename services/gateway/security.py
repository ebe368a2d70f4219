"""Request authentication: Twilio webhook/WebSocket signatures and short-lived browser tokens.

Twilio (https://www.twilio.com/docs/usage/security#validating-requests): with
``SWITCHBOARD_TWILIO_AUTH_TOKEN`` set, ``X-Twilio-Signature`` is checked with the official
``twilio.request_validator.RequestValidator`` over the public URL (``SWITCHBOARD_PUBLIC_URL`` + path and
query when set — behind an ingress the request's own URL is not what Twilio signed — else the request URL)
and the POST form parameters. The Media Streams WebSocket upgrade is signed over its ``wss://`` URL with no
parameters.

Browser tokens: ``POST /browser/token`` mints ``<expiry unix s>.<nonce>.<HMAC-SHA256>`` (URL-safe base64),
valid for :data:`TOKEN_TTL_S` seconds and usable once. The HMAC key is random per process unless
``SWITCHBOARD_API_TOKEN`` is set (then derived from it, so every gateway replica accepts every token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

__all__ = ["TOKEN_TTL_S", "BrowserTokens", "TokenError", "TwilioSignatures", "public_url_for"]

TOKEN_TTL_S: Final = 60
"""Seconds a browser token stays valid (it only has to survive the page opening its socket)."""


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
    """Checks ``X-Twilio-Signature``; disabled (everything accepted) when no auth token is configured."""

    def __init__(self, auth_token: str | None) -> None:
        self.enabled = bool(auth_token)
        self._validator = RequestValidator(auth_token or "")

    def valid(self, url: str, params: Mapping[str, str], signature: str | None) -> bool:
        """True when checking is off, or ``signature`` is Twilio's HMAC-SHA1 of ``url`` + sorted ``params``."""
        if not self.enabled:
            return True
        if not signature:
            return False
        return bool(self._validator.validate(url, dict(params), signature))


class TokenError(ValueError):
    """A browser token that is malformed, forged, expired or already used."""


class BrowserTokens:
    """Mints and checks single-use, short-lived HMAC tokens for ``WS /browser``."""

    def __init__(self, secret: str | None = None, ttl_s: int = TOKEN_TTL_S) -> None:
        material = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"switchboard-browser-token\x00" + material).digest()
        self.ttl_s = ttl_s
        self._used: dict[str, float] = {}

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def mint(self, now: float | None = None) -> tuple[str, int]:
        """A new token and its expiry (unix seconds)."""
        expiry = int((now if now is not None else time.time()) + self.ttl_s)
        body = f"{expiry}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._sign(body)}", expiry

    def check(self, token: str | None, now: float | None = None) -> None:
        """Accept ``token`` once.

        Raises:
            TokenError: missing, malformed, bad signature, expired, or used before.
        """
        now = now if now is not None else time.time()
        if not token or token.count(".") != 2 or len(token) > 200:
            raise TokenError("missing or malformed token")
        expiry_s, nonce, mac = token.split(".")
        if not hmac.compare_digest(mac, self._sign(f"{expiry_s}.{nonce}")):
            raise TokenError("bad token signature")
        if not expiry_s.isdigit() or int(expiry_s) < now:
            raise TokenError("token expired")
        self._used = {n: exp for n, exp in self._used.items() if exp >= now}
        if nonce in self._used:
            raise TokenError("token already used")
        self._used[nonce] = float(expiry_s)
