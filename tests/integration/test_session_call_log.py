"""What a takeover reads from a call's RT log (``services/session/rebuild.read_call_log``): after a handover,
during which both owners appended the same live caller audio, each append counts once — else a later takeover
would ask the gateway to replay from past the audio the model really heard (issue 22)."""

from __future__ import annotations

import base64

import orjson

from services.session.rebuild import read_call_log
from shared import subjects
from shared.bus import Bus, Headers


async def test_appends_both_owners_made_during_a_handover_count_once(bus: Bus, unique: str) -> None:
    call_id = f"call_log{unique}"
    frame = base64.b64encode(bytes(160)).decode()  # 20 ms of μ-law
    append = orjson.dumps({"type": "input_audio_buffer.append", "audio": frame})
    subject = subjects.rt_client(call_id, "input_audio_buffer.append")
    for n in range(100):  # epoch 1 alone for 1 s, then both owners for 1 s
        for epoch in (2, 1) if n >= 50 else (1,):
            await bus.publish_event(subject, append, call_id=call_id, headers={Headers.EPOCH: str(epoch)})
    await bus.flush_acks(10.0)
    logged = await read_call_log(bus, call_id)
    assert logged.appended_bytes == 100 * 160
