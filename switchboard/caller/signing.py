"""Sign the simulator's webhook requests as each carrier signs its own (test keys; the gateway verifies them
with the vendors' SDKs, ``services.gateway.carrier_security``).

- Twilio: ``X-Twilio-Signature`` with the twilio SDK's ``RequestValidator.compute_signature``.
- Telnyx: ``Telnyx-Signature-Ed25519`` = base64 Ed25519 signature of ``"<timestamp>|<body>"`` and
  ``Telnyx-Timestamp`` (https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks), made with
  ``cryptography`` — the telnyx SDK only verifies.
- Vonage: ``Authorization: Bearer <JWT>`` HS256 under the signature secret with ``iat``, ``jti``, ``iss`` and
  ``payload_hash`` (SHA-256 hex of the body, when there is one), made with PyJWT as Vonage documents
  (https://developer.vonage.com/en/getting-started/concepts/webhooks#decoding-signed-webhooks).
- Plivo: ``X-Plivo-Signature-V3`` + ``-Nonce`` with the plivo SDK's ``signature_v3`` helpers.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3
from twilio.request_validator import RequestValidator

__all__ = ["CarrierKeys", "new_telnyx_key", "plivo_headers", "telnyx_headers", "telnyx_public_key",
           "twilio_signature", "vonage_authorization"]


@dataclass(frozen=True)
class CarrierKeys:
    """The keys the simulator signs with (None: that carrier's requests go unsigned)."""

    twilio_auth_token: str | None = None
    telnyx_private_key: str | None = None
    """Base64 of a 32-byte Ed25519 private key (seed); the gateway holds its public key."""
    vonage_signature_secret: str | None = None
    plivo_auth_token: str | None = None


def new_telnyx_key() -> tuple[str, str]:
    """A fresh Ed25519 test key pair: ``(private seed, public key)``, both base64."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return base64.b64encode(seed).decode(), telnyx_public_key(base64.b64encode(seed).decode())


def telnyx_public_key(private_key: str) -> str:
    """The base64 public key of a base64 Ed25519 private seed."""
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)).decode()


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """``X-Twilio-Signature`` of a request to ``url`` with POST ``params``."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


def telnyx_headers(private_key: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """``Telnyx-Signature-Ed25519`` and ``Telnyx-Timestamp`` for ``body``."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    signature = key.sign(ts.encode() + b"|" + body)
    return {"Telnyx-Signature-Ed25519": base64.b64encode(signature).decode(), "Telnyx-Timestamp": ts}


def vonage_authorization(secret: str, body: bytes = b"", *, issued_at: int | None = None) -> str:
    """``Bearer <JWT>`` as Vonage signs a webhook carrying ``body``."""
    claims: dict[str, object] = {"iat": issued_at if issued_at is not None else int(time.time()),
                                 "jti": str(uuid.uuid4()), "iss": "Vonage"}
    if body:
        claims["payload_hash"] = hashlib.sha256(body).hexdigest()
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


def plivo_headers(auth_token: str, url: str, params: Mapping[str, str],
                  nonce: str | None = None) -> dict[str, str]:
    """``X-Plivo-Signature-V3`` and ``X-Plivo-Signature-V3-Nonce`` for a POST of ``params`` to ``url``."""
    nonce = nonce or str(secrets.randbelow(10**20))
    base = construct_post_url(url, dict(params)).decode("utf-8")
    signature = get_signature_v3(auth_token.encode(), base, nonce.encode())
    return {"X-Plivo-Signature-V3": signature.decode(), "X-Plivo-Signature-V3-Nonce": nonce}
