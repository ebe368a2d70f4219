"""Webhook signatures of Telnyx, Vonage and Plivo, verified with each vendor's official Python SDK; failing
closed like :class:`~services.gateway.security.TwilioSignatures`: without the vendor's key every request is
refused, and only ``SWITCHBOARD_INSECURE_DEV=true`` accepts unsigned ones.

- Telnyx (https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks#webhook-signing):
  ``Telnyx-Signature-Ed25519`` (base64 Ed25519 signature of ``"<Telnyx-Timestamp>|<raw body>"``) under the
  account's public key, the timestamp within 5 minutes; ``telnyx.lib.webhook_verification``.
- Vonage (https://developer.vonage.com/en/getting-started/concepts/webhooks#decoding-signed-webhooks):
  ``Authorization: Bearer <JWT>`` signed HS256 with the account's signature secret
  (``vonage_jwt.verify_signature``); when the token has a ``payload_hash`` claim, it must be the SHA-256 (hex)
  of the body (PyJWT reads the verified claims).
- Plivo (https://www.plivo.com/docs/voice/concepts/signature-validation): ``X-Plivo-Signature-V3`` (and its
  ``-Nonce``), HMAC-SHA256 over the URL, the sorted POST parameters and the nonce under the auth token
  (``plivo.utils.signature_v3.validate_v3_signature``).

The media WebSockets of these carriers are not signed the same way, so the signed webhook's answer carries a
single-use stream token (:meth:`~services.gateway.security.BrowserTokens.mint_stream`) in the media URL
(Telnyx, Plivo: ``?token=``) or as the upgrade's ``Authorization`` header (Vonage: the NCCO endpoint's
``authorization``), checked on the upgrade.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

import jwt
from plivo.utils.signature_v3 import validate_v3_signature
from vonage_jwt.errors import VonageVerifyJwtError
from vonage_jwt.verify_jwt import verify_signature

__all__ = ["PlivoSignatures", "TelnyxSignatures", "VonageSignatures"]

log = logging.getLogger("services.gateway")


class TelnyxSignatures:
    """Checks Telnyx's Ed25519 webhook signature (``public_key``: base64, from Mission Control)."""

    def __init__(self, public_key: str | None, *, insecure_dev: bool = False) -> None:
        self.public_key = public_key
        self.insecure_dev = insecure_dev

    def valid(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """True when ``headers`` carry a valid signature of ``body`` made within 5 minutes (always False
        without a key), or in insecure development mode."""
        if self.insecure_dev:
            return True
        if not self.public_key:
            return False
        # imported on first use: the telnyx package imports its whole REST client (about a second)
        from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

        try:
            verify_webhook_signature(body.decode("utf-8", "replace"), dict(headers), self.public_key)
        except WebhookVerificationError as exc:
            log.debug("telnyx signature rejected: %s", exc)
            return False
        return True


class VonageSignatures:
    """Checks Vonage's signed-webhook JWT (``Authorization: Bearer …``, HS256 under the signature secret)."""

    def __init__(self, signature_secret: str | None, *, insecure_dev: bool = False) -> None:
        self.secret = signature_secret
        self.insecure_dev = insecure_dev

    def valid(self, authorization: str | None, body: bytes = b"") -> bool:
        """True when ``authorization`` is ``Bearer <JWT>`` signed with the secret (not expired) and, when the
        token carries ``payload_hash``, it matches ``body``; always False without a secret, True in insecure
        development mode."""
        if self.insecure_dev:
            return True
        if not self.secret or not authorization or not authorization.startswith("Bearer "):
            return False
        token = authorization.removeprefix("Bearer ").strip()
        try:
            if not verify_signature(token, self.secret):
                return False
            claims: dict[str, Any] = jwt.decode(token, self.secret, algorithms=["HS256"])
        except (VonageVerifyJwtError, jwt.PyJWTError) as exc:
            log.debug("vonage signature rejected: %s", exc)
            return False
        expected = claims.get("payload_hash")
        if expected is None:
            return not body
        return hmac.compare_digest(str(expected), hashlib.sha256(body).hexdigest())


class PlivoSignatures:
    """Checks ``X-Plivo-Signature-V3`` with the (sub)account auth token."""

    def __init__(self, auth_token: str | None, *, insecure_dev: bool = False) -> None:
        self.auth_token = auth_token
        self.insecure_dev = insecure_dev

    def valid(self, method: str, url: str, params: Mapping[str, str], nonce: str | None,
              signature: str | None) -> bool:
        """True when ``signature`` signs ``url`` (+ sorted ``params`` for POST) and ``nonce`` under the auth
        token (always False without a token), or in insecure development mode."""
        if self.insecure_dev:
            return True
        if not self.auth_token or not nonce or not signature:
            return False
        try:
            return bool(validate_v3_signature(method.upper(), url, nonce, self.auth_token, signature,
                                              dict(params)))
        except Exception as exc:  # the SDK's argument validators raise their own errors for odd input
            log.debug("plivo signature rejected: %s", exc)
            return False
