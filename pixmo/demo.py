"""`pixmo demo`: a small but complete demo dataset, so every tool can be tried without annotators.

Images are real photos shipped by scikit-image plus generated pictures of coloured shapes whose
positions are known, so the synthetic point sets are correct. Annotations of every kind are made:
assignments, recordings (espeak-ng speaking the transcript when it is installed, a tone
otherwise), transcripts, cleaned and merged captions, point sets (pointing, counting, not
present), CapQA pairs and reviews. Everything is seeded, so the same N gives the same data.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy import select

from pixmo.audio import SAMPLE_RATE, decode_audio, encode_audio
from pixmo.auth import create_user
from pixmo.db.models import (
    Assignment,
    Caption,
    Image,
    PointSet,
    Project,
    ProjectImage,
    QAPair,
    Recording,
    Review,
    Transcript,
    User,
)
from pixmo.db.session import Database
from pixmo.formats.points import render_points
from pixmo.projects import attach_images, create_project
from pixmo.reviews import sync_assignment_verdict
from pixmo.storage import BlobStore, content_key

DEMO_PASSWORD = "demo-password"
DEMO_USERS = [("demo-admin", "admin"), ("demo-reviewer", "reviewer"), ("ann1", "annotator"), ("ann2", "annotator"), ("ann3", "annotator")]
CAPTION_PROJECT, POINTS_PROJECT, ASK_PROJECT = "demo-captions", "demo-points", "demo-ask"
EXPLAIN_PROJECT = "demo-explain"

PHOTOS = {
    "astronaut": "A portrait photo of a smiling astronaut in an orange spacesuit with a black helmet in front of her, an American flag on the left and a model of the space shuttle in the background.",
    "coffee": "A photo of an espresso in a red cup on a red saucer with a spoon, on a wooden table.",
    "chelsea": "A close-up photo of a tabby cat with green eyes, in front of a blurred background.",
    "rocket": "A photo of a white rocket on a launch pad at dusk between lightning towers, with lights glowing at their feet.",
}
# checked by drawing them on the images (skimage.data)
PHOTO_POINTS = {"chelsea": ("cat eye", [(0.38, 0.37), (0.70, 0.45)]), "astronaut": ("helmet", [(0.84, 0.79)])}

COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FILLERS = ["um", "uh", "so", "like", "you know"]


@dataclass
class DemoImage:
    name: str
    data: bytes
    ext: str
    caption: str
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)


def _where(x: float, y: float) -> str:
    vert = "top" if y < 0.33 else "bottom" if y > 0.66 else "middle"
    horiz = "left" if x < 0.33 else "right" if x > 0.66 else "center"
    return "center" if vert == "middle" and horiz == "center" else f"{vert} {horiz}"


def _shapes_image(rng: random.Random, index: int) -> DemoImage:
    width, height = rng.choice([(640, 480), (512, 512), (800, 600), (480, 640)])
    background = rng.choice([("white", (250, 250, 250)), ("light gray", (215, 215, 215)), ("beige", (240, 225, 200))])
    im = PILImage.new("RGB", (width, height), background[1])
    draw = ImageDraw.Draw(im)
    kinds = rng.sample([(c, s) for c in COLORS for s in SHAPES], k=rng.randint(1, 3))
    points: dict[str, list[tuple[float, float]]] = {}
    boxes: list[tuple[int, int, int, int]] = []
    for color, shape in kinds:
        label = f"{color} {shape}"
        for _ in range(rng.randint(1, 4)):
            r = rng.randint(18, 40)
            for _try in range(50):
                cx, cy = rng.randint(r, width - r - 1), rng.randint(r, height - r - 1)
                box = (cx - r, cy - r, cx + r, cy + r)
                if all(box[2] < b[0] - 4 or box[0] > b[2] + 4 or box[3] < b[1] - 4 or box[1] > b[3] + 4 for b in boxes):
                    break
            else:
                continue
            boxes.append(box)
            fill = COLORS[color]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
                cy = cy + r // 3  # centroid of the triangle
            points.setdefault(label, []).append((round(cx / width, 4), round(cy / height, 4)))
    parts = []
    for label, pts in points.items():
        n = len(pts)
        noun = label + ("s" if n > 1 else "")
        places = sorted({_where(x, y) for x, y in pts})
        parts.append(f"{NUMBER_WORDS[n]} {noun} at the {' and the '.join(places)}")
    caption = (
        f"A simple digital illustration on a plain {background[0]} background showing "
        + "; ".join(parts)
        + ". The shapes are flat and solid with no outlines, text or shadows."
    )
    absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in points][:1]
    fmt, ext = ("PNG", "png") if index % 2 else ("JPEG", "jpg")
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return DemoImage(f"shapes-{index:04d}", buf.getvalue(), ext, caption, points, absent)


def _photo_images() -> list[DemoImage]:
    try:
        import skimage.data as skdata
    except ImportError:
        return []
    out = []
    for name, caption in PHOTOS.items():
        arr = getattr(skdata, name)()
        buf = io.BytesIO()
        PILImage.fromarray(arr).save(buf, "JPEG", quality=92)
        pts = dict([PHOTO_POINTS[name]]) if name in PHOTO_POINTS else {}
        out.append(DemoImage(name, buf.getvalue(), "jpg", caption, pts, ["dog"] if name != "chelsea" else []))
    return out


def spoken_transcript(caption: str, rng: random.Random) -> str:
    """What an annotator might have said: the caption's content, lower case, with fillers."""
    words = caption.replace(";", ",").rstrip(".").split()
    out = ["okay", "so", "at", "first", "glance"]
    for i, word in enumerate(words):
        if rng.random() < 0.08:
            out.append(rng.choice(FILLERS))
        if rng.random() < 0.03:
            out.append(word.lower().strip(".,"))  # a repeated word, as in speech
        out.append(word.lower())
    out += ["and", "um", "yeah", "that's", "it"]
    return " ".join(out).replace(" .", ".")


def speak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray | None:
    """Synthesise ``text`` with espeak-ng (16 kHz mono float32), or None when it is not installed."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", tmp.name, text], check=True, capture_output=True)
        return decode_audio(tmp.name).samples


def _tone(seconds: float, rng: random.Random) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.1 * np.sin(2 * np.pi * rng.choice([220, 330, 440]) * t)).astype(np.float32)


def demo_images(n: int, seed: int = 0) -> list[DemoImage]:
    """``n`` demo images: the bundled photos first, then generated shape pictures."""
    rng = random.Random(seed)
    photos = _photo_images()[:n]
    return photos + [_shapes_image(rng, i) for i in range(n - len(photos))]


def _ask_pairs(session, image_id: int, project_ids: dict[str, int], user_id: int, caption: str, label: str, points) -> list[QAPair]:  # noqa: ANN001
    """An accepted ask-the-model answer (the caption's first sentence) and an accepted point
    explanation of one labelled object, each from a submitted task of its project."""
    summary = caption.split(". ")[0].rstrip(".") + "."
    marks = [{"label": label, "points": [list(p) for p in points]}]
    exchanges = [
        (ASK_PROJECT, "ask", "What is in this picture?", summary,
         [{"role": "user", "content": "What is in this picture?"}, {"role": "assistant", "content": summary}]),
        (EXPLAIN_PROJECT, "point_explain", f"Where is the {label}?", f"The {label} is here: {render_points(points, label)}.",
         [{"role": "context", "marks": marks}, {"role": "user", "content": f"Where is the {label}?"},
          {"role": "assistant", "content": f"The {label} is here: [1]."}]),
    ]
    pairs = []
    for project, source, question, answer, messages in exchanges:
        assignment = Assignment(project_id=project_ids[project], image_id=image_id, user_id=user_id,
                                status="submitted", active_seconds=30.0)
        session.add(assignment)
        session.flush()
        assignment.submitted_at = assignment.created_at
        pairs.append(QAPair(image_id=image_id, project_id=project_ids[project], user_id=user_id,
                            assignment_id=assignment.id, source=source, status="accepted", question=question,
                            answer=answer, model="demo/template", prompt_version="demo-v1", messages=messages))
    return pairs


def create_demo(db: Database, store: BlobStore, n_images: int = 12, seed: int = 0, speech: bool = True) -> dict:
    """Create (or top up) the demo projects with ``n_images`` images and synthetic annotations."""
    from pipelines.ingest import ingest_folder  # noqa: PLC0415 - see cli note: demo composes a stage

    rng = random.Random(seed)
    images = demo_images(n_images, seed)
    with db.session() as session:
        users = {}
        for username, role in DEMO_USERS:
            user = session.scalars(select(User).where(User.username == username)).first()
            users[username] = user or create_user(session, username, DEMO_PASSWORD, role)
        projects = {}
        for name, kind, cfg in [
            (CAPTION_PROJECT, "caption", {"overlap": 2, "min_seconds": 5, "max_seconds": 120}),
            (POINTS_PROJECT, "points", {"labels": sorted({f"{c} {s}" for c in COLORS for s in SHAPES})}),
            (ASK_PROJECT, "ask", {}),
            # its labels are suggestions for the marks
            (EXPLAIN_PROJECT, "point_explain", {"labels": sorted({f"{c} {s}" for c in COLORS for s in SHAPES})}),
        ]:
            project = session.scalars(select(Project).where(Project.name == name)).first()
            projects[name] = project or create_project(
                session, name, kind, instructions=f"Demo {kind} project created by `pixmo demo`.", **cfg
            )
        user_ids = {k: u.id for k, u in users.items()}
        project_ids = {k: p.id for k, p in projects.items()}

    with tempfile.TemporaryDirectory() as tmp:
        for im in images:
            Path(tmp, f"{im.name}.{im.ext}").write_bytes(im.data)
        ingest_stats = ingest_folder(db, store, tmp, CAPTION_PROJECT, source="demo")

    annotators = ["ann1", "ann2", "ann3"]
    made = {"recordings": 0, "transcripts": 0, "captions": 0, "point_sets": 0, "qa_pairs": 0, "reviews": 0}
    for n_image, im in enumerate(images):
        sha = hashlib.sha256(im.data).hexdigest()
        with db.session() as session:
            image = session.scalars(select(Image).where(Image.sha256 == sha)).one()
            for pname in (POINTS_PROJECT, ASK_PROJECT, EXPLAIN_PROJECT):
                attach_images(session, session.get(Project, project_ids[pname]), [image.id])
            if session.scalars(select(Recording.id).where(Recording.image_id == image.id)).first():
                continue  # this image was annotated by an earlier demo run
            transcript_rows = []
            for who in rng.sample(annotators, k=2 if rng.random() < 0.6 else 1):
                text = spoken_transcript(im.caption, rng)
                samples = speak(text) if speech else None
                if samples is None:
                    samples = _tone(rng.uniform(8, 15), rng)
                audio = encode_audio(samples)
                audio_sha = hashlib.sha256(audio).hexdigest()
                key = content_key(audio_sha, "ogg")
                store.put_bytes(audio, key=key, content_type="audio/ogg")
                duration = len(samples) / SAMPLE_RATE
                assignment = Assignment(
                    project_id=project_ids[CAPTION_PROJECT], image_id=image.id, user_id=user_ids[who],
                    status="submitted", active_seconds=round(duration + rng.uniform(5, 40), 1),
                )
                session.add(assignment)
                session.flush()
                assignment.submitted_at = assignment.created_at
                rec = Recording(
                    project_id=project_ids[CAPTION_PROJECT], image_id=image.id, user_id=user_ids[who],
                    assignment_id=assignment.id, storage_key=key, sha256=audio_sha, mime="audio/ogg",
                    duration_s=round(duration, 3), bytes=len(audio),
                )
                session.add(rec)
                session.flush()
                n_words = len(text.split())
                tr = Transcript(
                    recording_id=rec.id, asr_model="demo/synthetic", text=text, language="en",
                    segments=[{"start": 0.0, "end": round(duration, 2), "text": text}],
                    metrics={"duration_s": round(duration, 2), "speech_s": round(duration * 0.9, 2),
                             "wpm": round(n_words / duration * 60, 1), "avg_logprob": round(rng.uniform(-0.6, -0.1), 3),
                             "no_speech_prob": round(rng.uniform(0, 0.1), 3), "compression_ratio": round(rng.uniform(1.3, 2.0), 2)},
                    flags=[],
                )
                session.add(tr)
                session.flush()
                transcript_rows.append(tr)
                made["recordings"] += 1
                made["transcripts"] += 1
            first = transcript_rows[0]
            cap = Caption(
                image_id=image.id, project_id=project_ids[CAPTION_PROJECT], kind="cleaned", text=im.caption,
                model="demo/rule", prompt_version="demo-v1", produced_by="rule",
                source_transcript_ids=[first.id], source_key=str(first.id),
                faithfulness={"supported": 1.0, "added": []}, flags=[],
            )
            session.add(cap)
            made["captions"] += 1
            if len(transcript_rows) > 1:
                ids = sorted(t.id for t in transcript_rows)
                session.add(Caption(
                    image_id=image.id, project_id=project_ids[CAPTION_PROJECT], kind="merged", text=im.caption,
                    model="demo/rule", prompt_version="demo-v1", produced_by="rule",
                    source_transcript_ids=ids, source_key=",".join(map(str, ids)),
                    faithfulness={"supported": 1.0, "added": []}, flags=[],
                ))
                made["captions"] += 1
            session.flush()
            for label, pts in im.points.items():
                method = "counting" if len(pts) > 1 and rng.random() < 0.5 else "pointing"
                ps = PointSet(image_id=image.id, project_id=project_ids[POINTS_PROJECT], user_id=user_ids[rng.choice(annotators)],
                              label=label, points=[list(p) for p in pts], method=method)
                session.add(ps)
                made["point_sets"] += 1
                n = len(pts)
                session.add(QAPair(
                    image_id=image.id, project_id=project_ids[CAPTION_PROJECT], caption_id=cap.id, idx=made["qa_pairs"] % 1000,
                    source="capqa", status="accepted", question=f"How many {label}s are in the image?",
                    answer=f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {label}{'s' if n > 1 else ''}.",
                    model="demo/template", prompt_version="demo-v1",
                ))
                made["qa_pairs"] += 1
            if im.points:  # an ask-the-model exchange and a point explanation, as the web app would store
                session.add_all(_ask_pairs(session, image.id, project_ids,
                                           user_ids[annotators[n_image % len(annotators)]], im.caption,
                                           *min(im.points.items())))
                made["qa_pairs"] += 2
            for label in im.absent:
                session.add(PointSet(image_id=image.id, project_id=project_ids[POINTS_PROJECT], user_id=user_ids[rng.choice(annotators)],
                                     label=label, points=[], not_present=True, method="pointing"))
                made["point_sets"] += 1
            session.flush()
            for rec_id in session.scalars(select(Recording.id).where(Recording.image_id == image.id)):
                roll = rng.random()
                if roll < 0.7:
                    verdict, reason = "approved", ""
                elif roll < 0.85:
                    verdict, reason = "rejected", rng.choice(["too short", "describes a different image", "background noise"])
                else:
                    continue
                session.add(Review(target_type="recording", target_id=rec_id, image_id=image.id,
                                   reviewer_id=user_ids["demo-reviewer"], verdict=verdict, reason=reason))
                sync_assignment_verdict(session, "recording", rec_id, verdict)
                made["reviews"] += 1
    with db.session() as session:
        n_images = session.query(ProjectImage).filter_by(project_id=project_ids[CAPTION_PROJECT]).count()
    return {"images": n_images, "ingest": ingest_stats["statuses"], "created": made,
            "users": [u for u, _ in DEMO_USERS], "password": DEMO_PASSWORD}
