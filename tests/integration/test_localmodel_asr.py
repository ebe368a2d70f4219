"""The recogniser on real synthesised telephone speech (espeak-ng → μ-law 8 kHz → 16 kHz → pocketsphinx).

A pooled decoder must give the same transcript for the same audio whatever it decoded before: pocketsphinx's
live CMN would otherwise carry the previous utterance's cepstral mean into the next one (it did: the same
"My name is John Smith" audio came back with different names depending on decode order).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.localmodel.asr import Recognizer
from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from services.localmodel.grammar import LanguageModelSpec
from shared.audio import PCMU, Resampler, decode, parse_format, silence
from shared.tts import synthesize_format

SENTENCES = ("My name is John Smith", "No, thank you", "Hi, I would like to book an appointment for tomorrow at ten",
             "Hello, can you hear me")


def telephone(text: str) -> npt.NDArray[np.int16]:
    fmt = parse_format(PCMU)
    ulaw = silence(fmt, 300) + synthesize_format(text, fmt) + silence(fmt, 500)
    return Resampler(fmt.rate, 16000).process(decode(fmt, ulaw)).astype(np.int16)


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
