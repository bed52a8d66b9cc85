"""Audio classification: base64 WAV / FLAC / OGG decoded with soundfile (libsndfile), mixed to
mono, resampled to the model's rate (scipy's polyphase filter), bounded in seconds."""

from __future__ import annotations

import io
from math import gcd
from typing import Any

import numpy as np

from ..codec import check_tensor
from ..errors import InvalidInput
from ..manifest import Manifest
from .common import MAX_AUDIO_BYTES, b64_bytes, media_list


def load_audio(data: Any, rate: int, max_seconds: float) -> np.ndarray:
    """A base64 clip as float32 mono samples at ``rate``; longer than ``max_seconds`` is
    InvalidInput (read from the header, before decoding)."""
    import soundfile as sf

    raw = b64_bytes(data, "an audio clip", MAX_AUDIO_BYTES)
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            if f.samplerate <= 0 or f.frames / f.samplerate > max_seconds:
                raise InvalidInput(
                    f"audio is {f.frames / max(f.samplerate, 1):.1f} s long; this model takes "
                    f"at most {max_seconds:g} s (audio.max_seconds)")
            samples = f.read(dtype="float32", always_2d=True)
            source = f.samplerate
    except InvalidInput:
        raise
    except Exception as exc:  # libsndfile's errors on hostile bytes
        raise InvalidInput("audio could not be decoded (WAV, FLAC or OGG)") from exc
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if source != rate and mono.size:
        from scipy.signal import resample_poly

        g = gcd(source, rate)
        mono = resample_poly(mono, rate // g, source // g).astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def prepare(manifest: Manifest, payload: dict[str, Any]) -> dict[str, np.ndarray]:
    audio, spec = manifest.audio, manifest.inputs[0]
    assert audio is not None
    clips = [load_audio(c, audio.sample_rate, audio.max_seconds)
             for c in media_list(payload, "audio", "audios", "base64 WAV/FLAC/OGG",
                                 manifest.max_batch)]
    want = spec.shape[-1]
    length = want if want != -1 else max(max(len(c) for c in clips), 1)
    batch = np.zeros((len(clips), length), dtype=np.float32)  # zero padded, or cut
    for i, c in enumerate(clips):
        batch[i, :min(len(c), length)] = c[:length]
    if len(spec.shape) == 1:
        if len(clips) != 1:
            raise InvalidInput("this model takes one clip per call ([samples] input)")
        batch = batch[0]
    return {spec.name: check_tensor(spec, batch.astype(spec.dtype), manifest.max_batch)}


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A 16-bit PCM WAV of ``samples`` (for generated review input and the demo)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
