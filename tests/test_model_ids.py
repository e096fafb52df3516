"""Model ids of models given by path: name plus content fingerprint (pixmo.model_ids)."""

from __future__ import annotations

import shutil

import pytest

from pixmo.asr import asr_model_id
from pixmo.model_ids import fingerprint, path_model_id


def _checkpoint(folder, weights: bytes):  # noqa: ANN001, ANN202
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "model.bin").write_bytes(weights)
    return folder


def test_two_checkpoints_of_one_name_are_two_models_and_a_copy_is_the_same(tmp_path):
    """Two runs' checkpoint-500 folders had one id: the second model found every item done."""
    a = _checkpoint(tmp_path / "run1/checkpoint-500", b"\x01" * 3_000_000)
    b = _checkpoint(tmp_path / "run2/checkpoint-500", b"\x01" * 2_999_999 + b"\x02")  # the last byte differs
    copy = tmp_path / "elsewhere/checkpoint-500"
    shutil.copytree(a, copy)
    assert fingerprint(a) != fingerprint(b) and fingerprint(a) == fingerprint(copy)
    assert path_model_id("checkpoint-500", a).startswith("checkpoint-500@")
    (copy / ".DS_Store").write_bytes(b"junk")  # hidden files are not the model
    assert fingerprint(copy) == fingerprint(a)
    (copy / "tokenizer.json").write_text("{}")  # another file is
    assert fingerprint(copy) != fingerprint(a)


def test_asr_and_llm_ids_of_models_given_by_path(tmp_path):
    pytest.importorskip("faster_whisper")
    one, two = _checkpoint(tmp_path / "a/model", b"x" * 100), _checkpoint(tmp_path / "b/model", b"y" * 100)
    ids = {asr_model_id("faster-whisper", str(one)), asr_model_id("faster-whisper", str(two))}
    assert len(ids) == 2 and all(i.startswith("faster-whisper:model@") for i in ids)
    assert asr_model_id() == "faster-whisper:tiny.en"  # the bundled model keeps its name
    first, second = tmp_path / "r1/best.pt", tmp_path / "r2/best.pt"
    for path, data in ((first, b"1"), (second, b"2")):
        path.parent.mkdir()
        path.write_bytes(data)
    assert asr_model_id("openai-whisper", str(first)) != asr_model_id("openai-whisper", str(second))
    assert asr_model_id("openai-whisper", "small") == "openai-whisper:small"  # a name stays a name
    from pixmo.llm.local import LocalBackend

    g1, g2 = tmp_path / "m1/model.gguf", tmp_path / "m2/model.gguf"
    for path, data in ((g1, b"GGUF1"), (g2, b"GGUF2")):
        path.parent.mkdir()
        path.write_bytes(data)
    llm_ids = {LocalBackend(g1).model_id, LocalBackend(g2).model_id}
    assert len(llm_ids) == 2 and all(i.startswith("model@") for i in llm_ids)
