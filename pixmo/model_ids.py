"""Model ids for models given by path: the name plus a fingerprint of the content.

A model's id is its lineage (``transcripts.asr_model``, ``captions.model``) and what a stage
counts as done. Two checkpoints both named ``model.gguf`` or ``checkpoint-500`` in different run
folders had one id: the second model found every item done, and the LLM cache answered for it
with the first one's replies. A copy of the same weights keeps its id (no path, no mtime in it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_EDGE = 1 << 20  # bytes read from each end of each file


def fingerprint(path: str | os.PathLike) -> str:
    """Eight hex digits from the sizes and the first and last MiB of the file, or of every file
    below the folder (by relative name, hidden ones aside): cheap for weights of many GB."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix() if file != root else ''}\0{size}\0".encode())
        with open(file, "rb") as f:
            digest.update(f.read(_EDGE))
            if size > 2 * _EDGE:
                f.seek(size - _EDGE)
                digest.update(f.read(_EDGE))
    return digest.hexdigest()[:8]


def path_model_id(name: str, path: str | os.PathLike) -> str:
    """``name@<fingerprint of path>``."""
    return f"{name}@{fingerprint(path)}"
