"""openai-whisper (PyTorch) backend: a model name with a download root, or a ``.pt`` checkpoint.

Windows of many recordings become one stack of log-Mel spectrograms that ``whisper.decode``
decodes in batches; the fallback uses ``model.transcribe`` with rising temperatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pixmo.asr.base import FALLBACK_TEMPERATURES, ASRModel, DecodeOptions, WindowResult
from pixmo.errors import ConfigError
from pixmo.model_ids import path_model_id


def _import():
    try:
        import torch
        import whisper
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the openai-whisper backend needs `pip install 'pixmo-toolkit[asr]'`") from exc
    return whisper, torch


def model_name(model: str | None) -> str:
    """The short name used in the model id: the model name, or the checkpoint's file stem and fingerprint."""
    if model is None:
        raise ConfigError("the openai-whisper backend needs --model: a name (tiny.en, small, ...) or a .pt path")
    path = Path(model).expanduser()
    if path.is_file():  # told apart by content: two runs' "best.pt" are two models (pixmo.model_ids)
        return path_model_id(path.stem, path)
    return path.stem if path.suffix == ".pt" else model


class OpenAIWhisperASR(ASRModel):
    """openai-whisper ``Whisper`` model behind the common interface."""

    backend = "openai-whisper"

    def __init__(
        self,
        model: str | None,
        device: str = "cpu",
        download_root: str | None = None,
        options: DecodeOptions | None = None,
    ):
        whisper, torch = _import()
        name = model_name(model)
        super().__init__(f"{self.backend}:{name}", options)
        path = Path(model).expanduser()
        source = str(path) if path.is_file() else model
        if not path.is_file() and source not in whisper.available_models():
            names = ", ".join(whisper.available_models())
            raise ConfigError(f"no checkpoint file {model!r} and not a model name ({names})")
        try:
            self.model = whisper.load_model(source, device=device, download_root=download_root)
        except (RuntimeError, OSError) as exc:  # a download that cannot happen offline, a bad file
            raise ConfigError(f"cannot load openai-whisper model {model!r}: {exc}") from exc
        self.model.eval()
        self.device = device
        self._whisper = whisper
        self._torch = torch

    @property
    def is_multilingual(self) -> bool:
        return bool(self.model.is_multilingual)

    def _mels(self, audios: Sequence[np.ndarray]):
        whisper = self._whisper
        n_mels = self.model.dims.n_mels
        return self._torch.stack([
            whisper.log_mel_spectrogram(whisper.pad_or_trim(self._torch.from_numpy(np.ascontiguousarray(a))), n_mels)
            for a in audios
        ]).to(self.device)

    def _decode(self, audios: Sequence[np.ndarray], language: str) -> list[WindowResult]:
        whisper = self._whisper
        opts = whisper.DecodingOptions(
            task="transcribe", language=language, temperature=0.0,
            beam_size=self.options.beam_size if self.options.beam_size > 1 else None,
            without_timestamps=True, fp16=self.device != "cpu",
        )
        out: list[WindowResult] = []
        bs = max(1, self.options.batch_size)
        with self._torch.inference_mode():
            for i in range(0, len(audios), bs):
                mels = self._mels(audios[i : i + bs])
                if opts.beam_size is None:
                    decoded = whisper.decode(self.model, mels, opts)
                else:
                    # whisper.decode fails on a batch with beam search (openai/whisper#2197, unfixed in
                    # 20250625): encode the batch at once, then beam-search each window's features.
                    features = self.model.embed_audio(mels)
                    decoded = [whisper.decode(self.model, f[None], opts)[0] for f in features]
                for r in decoded:
                    out.append(WindowResult(r.text, float(r.avg_logprob), float(r.no_speech_prob),
                                            float(r.compression_ratio), len(r.tokens), float(r.temperature)))
        return out

    def _decode_fallback(self, audio: np.ndarray, language: str) -> WindowResult:
        t = self.options.thresholds
        with self._torch.inference_mode():
            result = self.model.transcribe(
                audio, language=language, temperature=FALLBACK_TEMPERATURES,
                beam_size=self.options.beam_size if self.options.beam_size > 1 else None, best_of=5,
                compression_ratio_threshold=t.compression_ratio, logprob_threshold=t.log_prob,
                no_speech_threshold=t.no_speech_prob, condition_on_previous_text=False,
                without_timestamps=True, fp16=self.device != "cpu", verbose=None,
            )
        segs = result["segments"]
        if not segs:
            return WindowResult("", 0.0, 1.0, 0.0, 0)
        weights = [max(len(s["tokens"]), 1) for s in segs]
        return WindowResult(
            text="".join(s["text"] for s in segs),
            avg_logprob=sum(s["avg_logprob"] * w for s, w in zip(segs, weights)) / sum(weights),
            no_speech_prob=max(s["no_speech_prob"] for s in segs),
            compression_ratio=max(s["compression_ratio"] for s in segs),
            n_tokens=sum(len(s["tokens"]) for s in segs),
            temperature=max(s["temperature"] for s in segs),
        )

    def _detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        with self._torch.inference_mode():
            _, probs = self.model.detect_language(self._mels([audio]))
        lang = max(probs[0], key=probs[0].get)
        return lang, float(probs[0][lang])
