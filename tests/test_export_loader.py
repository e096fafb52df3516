"""The training loader (pixmo.data) over exported shards: workers, nodes, decoding, Molmo targets."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sqlalchemy import select

from pixmo.db.models import Image
from pixmo.export import WebDatasetOptions, export_webdataset
from pixmo.formats.points import NONE_TEXT, parse_count, parse_points
from pixmo.verdicts import record_verdicts, unusable_captions
from tests.export_helpers import demo, demo_template  # noqa: F401

torch = pytest.importorskip("torch")


@pytest.fixture
def exported(demo, tmp_path):
    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=2, val_fraction=0, workers=1))
    with db.session() as s:
        keys = set(s.scalars(select(Image.sha256)))
    return out, keys


def test_two_workers_yield_every_sample_exactly_once(exported):
    from pixmo.data import pixmo_loader

    out, keys = exported
    loader = pixmo_loader(out, num_workers=2, shuffle=50, seed=3)
    seen = Counter(sample["__key__"] for sample in loader)
    assert set(seen) == keys and set(seen.values()) == {1}
    again = Counter(sample["__key__"] for sample in loader)  # a second epoch: the same, once each
    assert again == seen


def test_workers_hand_over_the_same_samples_as_one_process(exported):
    """With workers, samples travel in groups (pixmo.data.TRANSPORT_GROUP); what comes out is unchanged."""
    import torch

    from pixmo.data import pixmo_loader

    out, keys = exported
    alone = {s["__key__"]: s for s in pixmo_loader(out, num_workers=0, shuffle=0)}
    workers = {s["__key__"]: s for s in pixmo_loader(out, num_workers=2, shuffle=0)}
    assert set(alone) == set(workers) == keys
    for key, sample in alone.items():
        other = workers[key]
        assert isinstance(other["image"], torch.Tensor) and torch.equal(other["image"], sample["image"])
        assert other["targets"] == sample["targets"] and other["json"] == sample["json"]
        assert other["caption"] == sample["caption"]


def test_nodes_split_the_shards(exported, monkeypatch):
    from pixmo.data import pixmo_dataset

    out, keys = exported
    per_node = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_node.append({s["__key__"] for s in pixmo_dataset(out, shuffle=0, decode="bytes")})
    assert per_node[0] and per_node[1]
    assert not per_node[0] & per_node[1] and per_node[0] | per_node[1] == keys
    # or told directly (a launcher that sets no environment); it wins over the environment
    given = [{s["__key__"] for s in pixmo_dataset(out, shuffle=0, decode="bytes", rank=r, world_size=2)} for r in (1, 0)]
    assert given == per_node[::-1]
    from pixmo.data import pixmo_loader

    loaded = [s["__key__"] for s in pixmo_loader(out, num_workers=2, shuffle=0, decode="bytes", rank=0, world_size=2)]
    assert sorted(loaded) == sorted(per_node[0])  # through DataLoader workers too, each sample once
    three = [{s["__key__"] for s in pixmo_dataset(out, shuffle=0, decode="bytes", rank=r, world_size=3)} for r in range(3)]
    assert sum(map(len, three)) == len(keys) and set().union(*three) == keys
    for bad in ({"rank": 0}, {"rank": 2, "world_size": 2}, {"rank": -1, "world_size": 2}, {"rank": True, "world_size": 2}):
        with pytest.raises(ValueError, match="rank"):
            pixmo_dataset(out, **bad)


def test_samples_decode_to_tensors_with_molmo_targets(exported):
    from pixmo.data import pixmo_dataset

    out, keys = exported
    n_points = n_counts = n_none = n_captioned = 0
    seen_sources = Counter()
    for sample in pixmo_dataset(out, shuffle=0):
        record = sample["json"]
        image = sample["image"]
        assert image.dtype == torch.uint8
        assert tuple(image.shape) == (3, record["image"]["height"], record["image"]["width"])
        tasks = [t["task"] for t in sample["targets"]]
        usable = [c["text"] for c in record["captions"]
                  if c["id"] not in unusable_captions(record["captions"], record["transcripts"],
                                                      record_verdicts(record["reviews"]))]
        if sample["caption"] in usable:
            assert sample["targets"][0] == {"task": "caption", "prompt": "Describe this image in detail.",
                                            "text": sample["caption"]}
            n_captioned += 1
        else:  # the .txt fell back to a transcript: speech, a transcript target only
            assert "caption" not in tasks
        sets = {ps["label"]: ps for ps in record["point_sets"]}
        for target in sample["targets"]:
            if target["task"] == "counting":
                answer = parse_count(target["text"])
                label = target["prompt"][len("How many "):-len(" are there?")]
                assert answer.count == len(sets[label]["points"])
                n_counts += 1
            elif target["task"] == "pointing" and target["text"] == NONE_TEXT:
                n_none += 1
            elif target["task"] == "pointing":
                [ref] = parse_points(target["text"])
                got = [c for p in sorted(ref.points) for c in p]
                want = [c for p in sorted(map(tuple, sets[ref.label]["points"])) for c in p]
                assert got == pytest.approx(want, abs=1e-3)  # Molmo text keeps one decimal on 0-100
                n_points += 1
        # CapQA written from a caption that is not trained on (rejected, or from a rejected recording) goes with it
        bad_captions = unusable_captions(record["captions"], record["transcripts"], record_verdicts(record["reviews"]))
        for source in ("capqa", "ask", "point_explain"):  # the demo has each kind of accepted QA
            assert tasks.count(source) == sum(1 for q in record["qa"] if q["status"] == "accepted" and q["source"] == source
                                              and not (source == "capqa" and q["caption_id"] in bad_captions))
            seen_sources[source] += tasks.count(source)
    assert n_points and n_counts and n_none and n_captioned
    assert all(seen_sources.values()), seen_sources


def _crop(image):
    return image[:, :32, :32]


def test_batches_stack_same_sized_images(exported):
    from pixmo.data import pixmo_loader

    out, keys = exported
    batches = list(pixmo_loader(out, batch_size=5, num_workers=0, shuffle=0, transform=_crop))
    assert sum(len(b["__key__"]) for b in batches) == len(keys)
    assert tuple(batches[0]["image"].shape) == (5, 3, 32, 32)
    assert isinstance(batches[0]["targets"][0], list)
    assert json.dumps(batches[0]["json"][0])  # the record stays plain JSON data


def _to_numpy(image):
    return image.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_transform_returning_numpy_still_gives_tensors(exported, workers):
    import torch

    from pixmo.data import pixmo_loader

    out, keys = exported
    samples = list(pixmo_loader(out, num_workers=workers, shuffle=0, transform=_to_numpy))
    assert {s["__key__"] for s in samples} == keys
    assert all(isinstance(s["image"], torch.Tensor) and s["image"].ndim == 3 and s["image"].shape[2] == 3 for s in samples)
    # in batches too, where same-shaped images are stacked
    batches = list(pixmo_loader(out, num_workers=workers, shuffle=0, batch_size=2, transform=_to_numpy))
    assert sum(len(b["__key__"]) for b in batches) == len(keys)
    assert all(isinstance(im, torch.Tensor) for b in batches for im in b["image"])


def test_sources_and_modes_that_cannot_work_are_refused_clearly(exported):
    from pixmo.data import pixmo_dataset

    out, keys = exported
    with pytest.raises(ValueError, match="split 'validation' of .* has no shards"):
        pixmo_dataset(out, split="validation")  # exported with val_fraction=0
    with pytest.raises(ValueError, match="no shards given"):
        pixmo_dataset([])
    with pytest.raises(ValueError, match="decode must be one of tensor, pil, bytes, not 'nonsense'"):
        pixmo_dataset(out, decode="nonsense")
    # shard paths as Path objects, as a glob or a listing gives them
    shards = sorted(out.glob("train-*.tar"))
    assert {s["__key__"] for s in pixmo_dataset(shards, shuffle=0, decode="bytes")} == keys


def test_a_seed_makes_resampled_shard_draws_repeatable(exported):
    import itertools

    from pixmo.data import pixmo_dataset

    out, keys = exported

    def first(seed, n=40):
        dataset = pixmo_dataset(out, resampled=True, seed=seed, shuffle=0, decode="bytes")
        return [s["__key__"] for s in itertools.islice(iter(dataset), n)]

    assert first(5) == first(5)
    assert first(5) != first(6)
    assert set(first(5, 200)) == keys  # draws with replacement still reach every shard


def _shard_order(loader) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s["__url__"] for s in loader))


@pytest.mark.parametrize("workers", [0, 2])
def test_without_a_seed_each_epoch_visits_the_shards_in_a_new_order(exported, workers):
    from pixmo.data import pixmo_loader

    out, keys = exported
    # shardshuffle=True shuffles the shards even with no sample buffer
    loader = pixmo_loader(out, num_workers=workers, shuffle=0, shardshuffle=True, decode="bytes")
    epochs = [[s for s in loader] for _ in range(5)]
    assert all(sorted(s["__key__"] for s in epoch) == sorted(keys) for epoch in epochs)
    assert len({tuple(dict.fromkeys(s["__url__"] for s in epoch)) for epoch in epochs}) > 1
    seeded = pixmo_loader(out, num_workers=workers, shuffle=0, shardshuffle=True, seed=4, decode="bytes")
    assert len({_shard_order(seeded) for _ in range(3)}) == 1
    in_order = pixmo_loader(out, num_workers=0, shuffle=0, decode="bytes")
    assert list(_shard_order(in_order)) == sorted(str(p) for p in out.glob("train-*.tar"))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # torch, on 8 workers for 2 cores
def test_loader_options_reach_the_dataloader_and_too_few_shards_are_named(exported, monkeypatch):
    import warnings

    from pixmo.data import pixmo_loader

    out, keys = exported  # 6 shards
    loader = pixmo_loader(out, num_workers=2, persistent_workers=True, prefetch_factor=1, shuffle=0, decode="bytes")
    assert [sorted(s["__key__"] for s in loader) for _ in range(2)] == [sorted(keys)] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixmo_loader(out, num_workers=2, decode="bytes")  # enough shards: quiet
    with pytest.warns(UserWarning, match=r"6 shard\(s\) for 1 node\(s\) x 8 worker\(s\)"):
        pixmo_loader(out, num_workers=8, decode="bytes")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.warns(UserWarning) as caught:
        pixmo_loader(out, num_workers=2, decode="bytes")
    said = [str(w.message) for w in caught]
    assert any("6 shard(s) for 4 node(s) x 2 worker(s)" in m for m in said)
    assert any("the 4 nodes read 2 to 4 samples per epoch" in m for m in said)  # 2+2+1+1 shards of 2


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_show_the_viewer_background_the_annotators_saw(mode):
    """The export keeps alpha; the loader's plain RGB conversion dropped it, so transparent pixels
    came out as whatever colour lay under them (here white), not as the annotators saw them."""
    import io
    from pathlib import Path

    from PIL import Image

    from pixmo.data import VIEWER_BACKGROUND, decode_image

    css = (Path(__file__).resolve().parents[1] / "annotation_app/static/app.css").read_text()
    assert ".viewer { position: relative; background: #%02x%02x%02x;" % VIEWER_BACKGROUND in css  # kept together

    if mode == "P":
        im = Image.new("P", (4, 2), 0)
        im.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
        im.putpixel((0, 0), 1)
        options = {"transparency": 0}
    else:
        im = Image.new(mode, (4, 2), (255, 0) if mode == "LA" else (255, 255, 255, 0))
        im.putpixel((0, 0), (80, 255) if mode == "LA" else (200, 30, 30, 255))
        options = {}
    buf = io.BytesIO()
    im.save(buf, "PNG", **options)
    tensor = decode_image(buf.getvalue())
    assert tuple(tensor[:, 1, 3].tolist()) == VIEWER_BACKGROUND  # transparent: the viewer shows through
    assert tensor[:, 0, 0].tolist() == ([80, 80, 80] if mode == "LA" else [200, 30, 30])  # opaque: as it is


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped():
    import io

    import numpy as np
    from PIL import Image

    from pixmo.data import VIEWER_BACKGROUND, decode_image

    grey = (np.arange(600).reshape(20, 30) * 100).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    tensor = decode_image(buf.getvalue())
    assert tuple(tensor.shape) == (3, 20, 30)
    expected = (grey.astype(np.int64) * 255 + 32767) // 65535  # as a browser shows it
    assert (tensor[0].numpy() == expected).all() and (tensor[2] == tensor[0]).all()
    # with a transparent grey value (tRNS) too: it went through Pillow's clipping, all white
    solid = Image.fromarray(np.full((4, 6), 30000, np.uint16))
    solid.putpixel((0, 0), 0)
    buf = io.BytesIO()
    solid.save(buf, "PNG", transparency=0)
    with Image.open(io.BytesIO(buf.getvalue())) as check:
        assert check.mode == "I;16" and check.info.get("transparency") == 0
    tensor = decode_image(buf.getvalue())
    assert tensor[:, 2, 3].tolist() == [117] * 3  # 30000 of 65535
    assert tuple(tensor[:, 0, 0].tolist()) == VIEWER_BACKGROUND


def test_an_image_that_does_not_decode_names_its_sample(exported):
    from pixmo.data import pixmo_dataset, to_training_sample

    out, _ = exported
    sample = next(iter(pixmo_dataset(out, shuffle=0, decode="bytes")))
    ext = sample["json"]["image"]["ext"]
    raw = {"__key__": sample["__key__"], "__url__": sample["__url__"], "json": json.dumps(sample["json"]).encode(),
           ext: sample["image"][: len(sample["image"]) // 3]}
    with pytest.raises(OSError) as failure:
        to_training_sample(raw)
    assert f"image of sample {sample['__key__']} in {sample['__url__']}" in failure.value.__notes__


def test_nodes_that_read_different_numbers_of_samples_are_warned_of(exported, monkeypatch):
    """Shards dealt to nodes by index: when they do not divide evenly, the nodes with more are still
    training when the others end the epoch, and DDP's all-reduce waits for good. Said, with the counts."""
    import warnings

    from pixmo.data import pixmo_dataset, pixmo_loader, samples_per_node

    out, keys = exported
    for world in (1, 2, 3, 4, 5):
        totals = samples_per_node(out, world)
        counted = [sum(1 for _ in pixmo_dataset(out, shuffle=0, decode="bytes", rank=r, world_size=world))
                   for r in range(world)]
        assert totals == counted and sum(totals) == len(keys)
    even = next(w for w in (2, 3) if len(set(samples_per_node(out, w))) == 1)
    uneven = next(w for w in (4, 5) if len(set(samples_per_node(out, w))) > 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixmo_loader(out, num_workers=1, decode="bytes", rank=0, world_size=even)
    low, high = min(samples_per_node(out, uneven)), max(samples_per_node(out, uneven))
    with pytest.warns(UserWarning, match=f"the {uneven} nodes read {low} to {high} samples per epoch"):
        pixmo_loader(out, num_workers=1, decode="bytes", rank=0, world_size=uneven)
    with warnings.catch_warnings():  # endless, resampled shards: no epoch to end unevenly
        warnings.simplefilter("error")
        pixmo_loader(out, num_workers=1, decode="bytes", rank=0, world_size=uneven, resampled=True)
