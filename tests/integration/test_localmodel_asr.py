"""The recogniser on real synthesised telephone speech (espeak-ng → μ-law 8 kHz → 16 kHz → pocketsphinx).

A pooled decoder must give the same transcript for the same audio whatever it decoded before: pocketsphinx's
live CMN would otherwise carry the previous utterance's cepstral mean into the next one (it did: the same
"My name is John Smith" audio came back with different names depending on decode order).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.localmodel.asr import Recognizer
from services.localmodel.audio_in import InputAudio
from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from services.localmodel.grammar import LanguageModelSpec
from shared.audio import PCM24K, PCMU, Converter, parse_format, silence
from shared.tts import synthesize_format

SENTENCES = ("My name is John Smith", "No, thank you", "Hi, I would like to book an appointment for tomorrow at ten",
             "Hello, can you hear me")


def telephone(text: str, *, linear: bool = False) -> npt.NDArray[np.int16]:
    """``text`` spoken over μ-law 8 kHz as the session's input buffer hands it to the recogniser; ``linear``:
    the same call as a carrier's L16 16 kHz (Vonage) that the gateway hands on as 24 kHz PCM."""
    fmt = parse_format(PCMU)
    audio = silence(fmt, 300) + synthesize_format(text, fmt) + silence(fmt, 500)
    if linear:
        l16 = Converter(PCMU, "audio/pcm;rate=16000").convert(audio)
        audio = Converter("audio/pcm;rate=16000", PCM24K).convert(l16)
    buffer = InputAudio(parse_format(PCM24K) if linear else fmt, None)
    for i in range(0, len(audio), 960):  # 20 ms of 24 kHz PCM, 120 ms of μ-law
        buffer.append(audio[i:i + 960])
    return buffer.take()[1]


def test_transcripts_do_not_depend_on_what_the_decoder_heard_before() -> None:
    rec = Recognizer(max_idle=1)  # one pooled decoder: every utterance goes through the same one
    spec = LanguageModelSpec.from_session(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    audio = {s: telephone(s) for s in SENTENCES}
    first = {s: rec.recognize(spec, audio[s]).text for s in SENTENCES}
    for order in (SENTENCES[::-1], SENTENCES[1:] + SENTENCES[:1], SENTENCES[::2] + SENTENCES[1::2]):
        for s in order:
            assert rec.recognize(spec, audio[s]).text == first[s], f"{s!r} depends on decode order"
    assert rec.cmn_prior is not None and len(rec.cmn_prior.split(",")) == 13
    assert first["Hi, I would like to book an appointment for tomorrow at ten"].endswith("tomorrow at ten")


def test_a_name_asked_for_is_heard_over_the_telephone() -> None:
    """After "May I have your name?" the session decodes with the name answer grammar: "John Smith" over μ-law
    (heard as "John Davis"/"John Baker" before the folded high band and the answer grammar) comes back right for
    several renderings (espeak-ng's klatt voice adds fresh noise each time)."""
    rec = Recognizer()
    spec = LanguageModelSpec.from_session(DEMO_TOOLS, DEMO_INSTRUCTIONS, expect="name")
    heard = [rec.recognize(spec, telephone("My name is John Smith")).text for _ in range(3)]
    assert heard == ["my name is john smith"] * 3
    assert rec.recognize(spec, telephone("My name is Mary Jones")).text == "my name is mary jones"
    assert rec.recognize(spec, telephone("No, thank you")).text == "no thank you"


def test_telephone_audio_in_linear_pcm_is_heard_as_telephone_audio() -> None:
    """A carrier's linear PCM (Vonage L16 16 kHz → 24 kHz PCM at the gateway) carries telephone audio: heard as
    "John Davis" and "hello hang up at two" in every run while only 8 kHz formats got the telephone front end."""
    rec = Recognizer()
    name = LanguageModelSpec.from_session(DEMO_TOOLS, DEMO_INSTRUCTIONS, expect="name")
    plain = LanguageModelSpec.from_session(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    heard = [rec.recognize(name, telephone("My name is John Smith", linear=True)).text for _ in range(3)]
    assert heard == ["my name is john smith"] * 3
    assert rec.recognize(plain, telephone("No, thank you", linear=True)).text == "no thank you"
