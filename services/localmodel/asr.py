"""Speech recognition with pocketsphinx 5 (16 kHz en-US acoustic model shipped in its wheel).

Each session's utterance (16 kHz PCM16 — 8 kHz telephone audio is upsampled with ``shared.audio.Resampler``
before it gets here) is decoded in two passes on a worker thread:

1. the session's JSGF grammar (:func:`.grammar.build_jsgf`) — accepted when pocketsphinx's posterior
   ``hyp.prob`` is at least :data:`MIN_GRAMMAR_PROB`;
2. otherwise the session's small trigram LM (:func:`.grammar.build_lm`), which accepts any word order.

Decoders are expensive to build (acoustic model) but cheap to reuse, so :class:`Recognizer` keeps a pool per
LM/grammar (keyed by :attr:`LanguageModelSpec.key`) with a pronunciation dictionary restricted to that
model's words (loading the full 130k-word dictionary takes ~3 s; the subset ~20 ms). A decoder is used by one
thread at a time. Source: https://pocketsphinx.readthedocs.io/en/latest/pocketsphinx.html

Cepstral mean normalisation: pocketsphinx's live CMN carries its running mean from one utterance to the
next, so a pooled decoder's result depends on what it heard before (the same audio gave three different
transcripts depending on decode order). Every decode therefore starts from one fixed *CMN prior*: it is the
decoder's ``cmninit`` and ``Decoder.reinit_feat()`` (≈0.1 ms) resets the feature pipeline to it before each
utterance (``set_cmn`` alone is not enough: it keeps the running sums). The prior is computed once per process
by decoding :data:`CMN_CALIBRATION` on a fresh decoder — fixed sentences
synthesised by espeak-ng and passed through the G.711 μ-law 8 kHz channel, the way phone audio arrives — and
reading the adapted mean. Within an utterance CMN still adapts live. Results are then a function of the
audio alone, and on the scenario utterances more accurate than with a carried-over mean (docs/localmodel.md).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pocketsphinx

from services.localmodel.bandwidth import TelephoneBand
from services.localmodel.grammar import ANSWERS, LanguageModelSpec, build_answer_jsgf, build_jsgf, build_lm, words_in

__all__ = ["MIN_GRAMMAR_PROB", "Recognizer", "Transcript", "UtteranceStream"]

MIN_GRAMMAR_PROB: Final = 1e-4
"""Below this posterior the grammar's hypothesis is distrusted and the trigram LM pass decides."""
SAMPLE_RATE: Final = 16_000
_CHUNK: Final = 320  # 20 ms at 16 kHz: feeding in chunks keeps pocketsphinx's live CMN behaviour
_TAIL: Final = np.zeros(16 * 300, dtype="<i2")
"""300 ms of silence appended to every utterance: pocketsphinx finalises the last word far more reliably."""
BESTPATH: Final = False
"""pocketsphinx's lattice bestpath pass at the end of each utterance. Off: it runs *after* the caller stopped and
costs more than the whole forward decode, which streaming cannot hide, for a few points of word accuracy
(``bench/localmodel.py`` measures both); the forward (Viterbi) hypothesis is used as is. Without it the
posterior is always 1.0, so the LM pass runs only when the grammar finds nothing."""
BEAMS: Final = {"beam": 1e-60, "pbeam": 1e-60, "wbeam": 1e-40}
"""Search beams, wider than pocketsphinx's defaults (1e-48, 1e-48, 7e-29): with the paraphrase grammar the
default beams pruned the right path of short answers ("no, thank you" came back empty from the grammar pass)."""
LEAD_KEEP_MS: Final = 100
"""Silence kept before the first voiced 10 ms frame (VAD segments carry 300 ms of prefix padding; more than
~150 ms of leading silence made short answers like "no, thank you" misrecognised)."""
_VOICED_RMS: Final = 10 ** (-45 / 20) * 32768
"""A 10 ms frame louder than -45 dBFS counts as voiced for :func:`trim_leading_silence`."""
CMN_CALIBRATION: Final = (
    "The quick brown fox jumps over the lazy dog",
    "Please call me back tomorrow morning",
    "I would like some information about my account",
)
"""Sentences (not in any grammar or scenario) whose telephone-channel rendering sets the CMN prior."""


@dataclass(frozen=True)
class Transcript:
    """A recognition result: ``text`` (lower-case words), which pass produced it, its posterior and the
    decoding time in seconds."""

    text: str
    source: str
    prob: float
    seconds: float


@dataclass
class _Model:
    dict_path: str
    lm_path: str
    jsgf: str
    idle: list[Any]
    answers: dict[str, str]
    """Answer grammars (JSGF text) by :data:`~.grammar.ANSWERS` name; searches ``answer_<name>``."""


def _search(spec: LanguageModelSpec) -> str:
    """The grammar search for ``spec``: ``answer_<expect>`` when it expects an answer, else ``grammar``."""
    return f"answer_{spec.expect}" if spec.expect else "grammar"


def _first_voiced_frame(pcm: npt.NDArray[np.int16]) -> int | None:
    """Index of the first 10 ms frame of ``pcm`` (16 kHz) louder than -45 dBFS, or None."""
    frame = SAMPLE_RATE // 100
    n = len(pcm) // frame
    if n == 0:
        return None
    frames = pcm[:n * frame].astype(np.float64).reshape(n, frame)
    voiced = np.flatnonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > _VOICED_RMS)
    return int(voiced[0]) if len(voiced) else None


def trim_leading_silence(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """``pcm`` (16 kHz) without its leading silence beyond :data:`LEAD_KEEP_MS`; unchanged if never voiced."""
    first = _first_voiced_frame(pcm)
    if first is None:
        return pcm
    return pcm[max(0, first * (SAMPLE_RATE // 100) - LEAD_KEEP_MS * SAMPLE_RATE // 1000):]


class Recognizer:
    """Thread-safe pool of pocketsphinx decoders per language model; :meth:`recognize` blocks (run it in a
    worker thread)."""

    def __init__(self, work_dir: Path | None = None, max_idle: int = 4) -> None:
        self._dir = Path(work_dir or tempfile.mkdtemp(prefix="switchboard-asr-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._prons: dict[str, list[str]] | None = None
        self._cmn_prior: str | None = None
        model_dir = pocketsphinx.get_model_path()
        self._hmm = os.path.join(model_dir, "en-us", "en-us")
        self._full_dict = os.path.join(model_dir, "en-us", "cmudict-en-us.dict")

    def _pronunciations(self) -> dict[str, list[str]]:
        if self._prons is None:
            prons: dict[str, list[str]] = {}
            with open(self._full_dict, encoding="utf-8") as fh:
                for line in fh:
                    word = line.split(" ", 1)[0]
                    prons.setdefault(word.split("(", 1)[0], []).append(line.rstrip("\n"))
            self._prons = prons
        return self._prons

    def prepare(self, spec: LanguageModelSpec) -> None:
        """Build (once) the dictionary subset, LM file and grammar for ``spec``; blocking (~0.2–1 s)."""
        self._model(spec)

    def _model(self, spec: LanguageModelSpec) -> _Model:
        key = spec.key
        with self._lock:
            model = self._models.get(key)
        if model is not None:
            return model
        with self._build_lock:
            with self._lock:
                model = self._models.get(key)
            if model is not None:
                return model
            prons = self._pronunciations()
            vocab = {w for w in words_in(spec) if w in prons}
            dict_path = self._dir / f"{key}.dict"
            dict_path.write_text("".join(line + "\n" for w in sorted(vocab) for line in prons[w]), encoding="utf-8")
            lm_path = self._dir / f"{key}.arpa"
            lm_path.write_text(build_lm(spec, vocab), encoding="utf-8")
            model = _Model(str(dict_path), str(lm_path), build_jsgf(spec, vocab), [],
                           {a: build_answer_jsgf(spec, a, vocab) for a in ANSWERS})
            with self._lock:
                self._models[key] = model
            return model

    def _new_decoder(self, model: _Model) -> Any:
        decoder = pocketsphinx.Decoder(hmm=self._hmm, dict=model.dict_path, lm=model.lm_path, logfn=os.devnull,
                                       bestpath=BESTPATH, **BEAMS)
        decoder.add_jsgf_string("grammar", model.jsgf)
        for answer, jsgf in model.answers.items():
            decoder.add_jsgf_string(f"answer_{answer}", jsgf)
        with self._build_lock:
            if self._cmn_prior is None:
                self._cmn_prior = self._calibrate(decoder)
        decoder.config["cmninit"] = self._cmn_prior
        return decoder

    def _calibrate(self, decoder: Any) -> str:
        """The CMN prior: the live mean after decoding :data:`CMN_CALIBRATION` over the μ-law channel."""
        from shared.audio import PCMU, Resampler, decode, parse_format, silence
        from shared.tts import synthesize_format

        fmt = parse_format(PCMU)
        for sentence in CMN_CALIBRATION:
            # shaped like a VAD segment: prefix padding before the speech, the silence that ended it after
            ulaw = silence(fmt, 300) + synthesize_format(sentence, fmt) + silence(fmt, 500)
            pcm = TelephoneBand().process(Resampler(fmt.rate, SAMPLE_RATE).process(decode(fmt, ulaw)))
            self._decode(decoder, "_default", pcm.astype(np.int16), reset=False)
        return str(decoder.get_cmn(True))

    @property
    def cmn_prior(self) -> str | None:
        """The CMN prior in force (comma-separated cepstral means), once a decoder has been built."""
        return self._cmn_prior

    def recognize(self, spec: LanguageModelSpec, pcm16k: npt.NDArray[np.int16]) -> Transcript:
        """Recognise one utterance (int16 mono at 16 kHz). Blocking; thread-safe.

        Raises:
            RuntimeError: pocketsphinx failed to build a decoder or to decode.
        """
        started = time.perf_counter()
        model = self._model(spec)
        with self._lock:
            decoder = model.idle.pop() if model.idle else None
        if decoder is None:
            decoder = self._new_decoder(model)
        try:
            text, prob = self._decode(decoder, _search(spec), pcm16k)
            source = "grammar"
            if not text or prob < MIN_GRAMMAR_PROB:
                lm_text, lm_prob = self._decode(decoder, "_default", pcm16k)
                if lm_text or not text:
                    text, prob, source = lm_text, lm_prob, "lm"
        finally:
            with self._lock:
                if len(model.idle) < self._max_idle:
                    model.idle.append(decoder)
        return Transcript(text, source, prob, time.perf_counter() - started)

    def start_stream(self, spec: LanguageModelSpec) -> UtteranceStream:
        """Begin decoding one utterance incrementally (see :class:`UtteranceStream`). Blocking; one thread."""
        model = self._model(spec)
        with self._lock:
            decoder = model.idle.pop() if model.idle else None
        if decoder is None:
            decoder = self._new_decoder(model)
        return UtteranceStream(self, spec, model, decoder)

    def _release(self, model: _Model, decoder: Any) -> None:
        with self._lock:
            if len(model.idle) < self._max_idle:
                model.idle.append(decoder)

    @staticmethod
    def _decode(decoder: Any, search: str, pcm: npt.NDArray[np.int16], *, reset: bool = True) -> tuple[str, float]:
        decoder.activate_search(search)
        if reset:
            decoder.reinit_feat()  # back to the CMN prior (cmninit): no state from earlier utterances
        decoder.start_utt()
        data = np.concatenate([np.ascontiguousarray(trim_leading_silence(pcm), dtype="<i2"), _TAIL])
        for i in range(0, len(data), _CHUNK):
            decoder.process_raw(data[i:i + _CHUNK].tobytes())
        decoder.end_utt()
        hyp = decoder.hyp()
        if hyp is None:
            return "", 0.0
        words = [w for w in hyp.hypstr.split() if not w.startswith(("<", "["))]
        return " ".join(words), float(hyp.prob)


class UtteranceStream:
    """One utterance decoded while it is spoken: :meth:`feed` 16 kHz PCM16 as it arrives, then :meth:`finish`.

    The grammar pass runs incrementally, so when the caller stops only the last chunk, the tail and the final
    search remain (the whole-utterance path would decode everything then). Leading silence is trimmed on the
    fly as in :func:`trim_leading_silence`: audio is held until the first voiced 10 ms frame, then decoding
    starts :data:`LEAD_KEEP_MS` before it. All audio is kept for the trigram-LM fallback pass, which runs in
    :meth:`finish` when the grammar's hypothesis is empty or below :data:`MIN_GRAMMAR_PROB` — the same
    decision as :meth:`Recognizer.recognize`, so both give the same transcript for the same audio.
    Not thread-safe: one stream is driven by one thread.
    """

    def __init__(self, recognizer: Recognizer, spec: LanguageModelSpec, model: _Model, decoder: Any) -> None:
        self._recognizer = recognizer
        self._model = model
        self._decoder = decoder
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._held = np.zeros(0, dtype=np.int16)
        self._voiced = False
        self._cpu = 0.0
        self._open = True
        decoder.activate_search(_search(spec))
        decoder.reinit_feat()
        decoder.start_utt()

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None:
        """Decode the next piece of the utterance (int16 mono, 16 kHz)."""
        if not self._open or len(pcm16k) == 0:
            return
        started = time.perf_counter()
        chunk = np.ascontiguousarray(pcm16k, dtype="<i2")
        self._chunks.append(chunk)
        if not self._voiced:
            self._held = np.concatenate([self._held, chunk])
            if _first_voiced_frame(self._held) is None:
                # still silence: hold only what may be kept later, dropping whole 10 ms frames so the voiced
                # frame is found on the same grid as trim_leading_silence over the whole utterance
                frame, keep = SAMPLE_RATE // 100, LEAD_KEEP_MS * SAMPLE_RATE // 1000
                self._held = self._held[max(0, len(self._held) - keep) // frame * frame:]
                self._cpu += time.perf_counter() - started
                return
            self._voiced = True
            chunk, self._held = trim_leading_silence(self._held), np.zeros(0, dtype=np.int16)
        for i in range(0, len(chunk), _CHUNK):
            self._decoder.process_raw(chunk[i:i + _CHUNK].tobytes())
        self._cpu += time.perf_counter() - started

    def finish(self) -> Transcript:
        """End the utterance and return its transcript (grammar, else the LM pass over all the audio)."""
        if not self._open:
            raise RuntimeError("utterance stream already finished")
        started = time.perf_counter()
        self._open = False
        decoder = self._decoder
        try:
            if not self._voiced and len(self._held):
                decoder.process_raw(self._held.tobytes())
            decoder.process_raw(_TAIL.tobytes())
            decoder.end_utt()
            hyp = decoder.hyp()
            text = " ".join(w for w in hyp.hypstr.split() if not w.startswith(("<", "["))) if hyp else ""
            prob = float(hyp.prob) if hyp else 0.0
            source = "grammar"
            if not text or prob < MIN_GRAMMAR_PROB:
                audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
                lm_text, lm_prob = Recognizer._decode(decoder, "_default", audio)
                if lm_text or not text:
                    text, prob, source = lm_text, lm_prob, "lm"
        finally:
            self._recognizer._release(self._model, decoder)
        self._cpu += time.perf_counter() - started
        return Transcript(text, source, prob, self._cpu)

    def cancel(self) -> None:
        """Abandon the utterance and return the decoder to the pool."""
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):
                self._decoder.end_utt()
            self._recognizer._release(self._model, self._decoder)

