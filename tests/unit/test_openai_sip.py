"""The pure parts of OpenAI SIP calls: the webhook the local model signs verifies with the openai SDK (and a
wrong key or body does not), SIP headers become ``call.started``, URLs and transfer targets."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import openai
import pytest
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent

from services.gateway.openai_sip import call_started_for, sip_user
from services.localmodel.sip import sign_webhook
from services.session.sideband import sideband_url, transfer_uri, without_formats
from shared.config import load_settings

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    ts = int(time.time())
    return {"webhook-id": "wh_1", "webhook-timestamp": str(ts),
            "webhook-signature": sign_webhook(secret, "wh_1", ts, body)}


def test_a_signed_webhook_verifies_with_the_sdk() -> None:
    client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    body = json.dumps({"id": "evt_1", "object": "event", "type": "realtime.call.incoming", "created_at": 1,
                       "data": {"call_id": "rtc_1", "sip_headers": []}}).encode()
    event = client.webhooks.unwrap(body, _headers(body))
    assert isinstance(event, RealtimeCallIncomingWebhookEvent) and event.data.call_id == "rtc_1"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, _headers(body, "whsec_" + base64.b64encode(b"other").decode()))
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace(b"rtc_1", b"rtc_2"), _headers(body))


def test_a_bad_secret_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid webhook secret"):
        sign_webhook("whsec_not*base64", "wh_1", 1, b"{}")


@pytest.mark.parametrize(("value", "user"), [
    ('"Ann" <sip:+15551230001@trunk.example>;tag=1', "+15551230001"),
    ("sip:+18005551212@sip.example.com", "+18005551212"),
    ("<tel:+15550001111>", "+15550001111"),
    ("sips:alice@example.com;transport=tls", "alice"),
    ("anonymous", None),
    (None, None),
])
def test_sip_user(value: str | None, user: str | None) -> None:
    assert sip_user(value) == user


def test_call_started_from_the_invite() -> None:
    event = RealtimeCallIncomingWebhookEvent.model_validate({
        "id": "evt_1", "created_at": 1, "type": "realtime.call.incoming", "data": {"call_id": "rtc_9", "sip_headers": [
            {"name": "From", "value": "<sip:+15551230001@a>"}, {"name": "To", "value": "<sip:+15559870000@b>"},
            {"name": "Call-ID", "value": "abc@a"}, {"name": "X-Switchboard-Run-Id", "value": "r1"},
            {"name": "X-Other", "value": "ignored"}, {"name": "X-Switchboard-", "value": "no name"}]}})
    started = call_started_for(event, call_id="call_x", agent="receptionist", agent_version="2")
    assert (started.carrier, started.carrier_call_id, started.stream_id, started.from_, started.to) == \
        ("openai_sip", "rtc_9", "abc@a", "+15551230001", "+15559870000")
    assert started.custom_parameters == {"run_id": "r1"} and started.audio_format == "audio/pcmu"


def test_sideband_url_and_api_defaults() -> None:
    assert sideband_url("https://api.openai.com/v1", "rtc_1") == "wss://api.openai.com/v1/realtime?call_id=rtc_1"
    assert sideband_url("http://127.0.0.1:8766/v1/", "rtc_2") == "ws://127.0.0.1:8766/v1/realtime?call_id=rtc_2"
    with pytest.raises(ValueError, match="http"):
        sideband_url("ws://example/v1", "rtc_3")
    assert load_settings(openai_api_key="sk-x", openai_api_url=None).effective_openai_api_url == \
        "https://api.openai.com/v1"
    assert load_settings(openai_api_key=None, openai_api_url=None, localmodel_sip_port=9999) \
        .effective_openai_api_url == "http://127.0.0.1:9999/v1"


def test_transfer_targets_and_codec_free_sessions() -> None:
    assert transfer_uri("+15559870100") == "tel:+15559870100"
    assert transfer_uri("sip:desk@example.com") == "sip:desk@example.com"
    pcmu = {"type": "audio/pcmu"}
    session: dict[str, Any] = {"type": "realtime", "audio": {"input": {"format": pcmu, "turn_detection": None},
                                                             "output": {"format": pcmu, "voice": "marin"}}}
    assert without_formats(session)["audio"] == {"input": {"turn_detection": None}, "output": {"voice": "marin"}}
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}  # not changed in place
