"""Training-side loader: a torch ``IterableDataset`` / ``DataLoader`` over webdataset export shards.

    from pixmo.data import pixmo_loader

    loader = pixmo_loader("exports/v1", split="train", num_workers=4, shuffle=2000)
    for sample in loader:            # batch_size=None: one sample at a time
        sample["image"]              # uint8 tensor, 3 x H x W
        sample["caption"]            # the best caption (the .txt member)
        sample["targets"]            # Molmo-style (task, prompt, text): caption, transcripts, points, counts, QA

Shards are split across nodes (``rank``/``world_size`` given, else ``RANK``/``WORLD_SIZE`` or
torch.distributed) and across DataLoader
workers, so each sample is seen once per epoch; give the export at least nodes x workers shards
(``--maxcount``). Shard order is shuffled per worker and samples go through a shuffle buffer.
Exports on S3 (``s3://bucket/prefix``) are read with the toolkit's S3 settings
(``PIXMO_S3_ENDPOINT_URL``, AWS credentials). torch and webdataset are imported when first used.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from pixmo.formats.points import render_count, render_none, render_points
from pixmo.verdicts import (
    is_usable, newest_per_recording, record_verdicts, unusable_captions, usable_qa, usable_transcripts,
)

PROMPTS = {
    "caption": "Describe this image in detail.",
    "transcript": "Describe this image as if you were speaking about it.",
    "pointing": "Point to {label}.",
    "counting": "How many {label} are there?",
}
DECODE_MODES = ("tensor", "pil", "bytes")
TRANSPORT_GROUP = 16  # samples per hand-over from a DataLoader worker when iterating one at a time


def shard_urls(source: str | os.PathLike | Sequence[str], split: str = "train") -> list[str]:
    """Paths or URLs of the shards of ``split`` in an export (folder or ``s3://``), from its manifest.

    A list is taken as shard paths or URLs already. A split without shards is an error (webdataset
    would fail on it with a bare ``IndexError``).
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("no shards given: the list of shard paths or URLs is empty")
        return [os.fspath(s) for s in source]
    from pixmo.export.manifest import read_manifest
    from pixmo.export.target import open_target

    target = open_target(source)
    manifest = read_manifest(target)
    if split not in manifest["splits"]:
        raise ValueError(f"no split {split!r} in {target.url}; it has {', '.join(manifest['splits'])}")
    shards = manifest["splits"][split]["shards"]
    if not shards:
        raise ValueError(f"split {split!r} of {target.url} has no shards (the export selected no {split} samples)")
    return [target.location(name) for name in shards]


def samples_per_node(source: str | os.PathLike, world_size: int, split: str = "train") -> list[int]:
    """How many samples of ``split`` each of ``world_size`` nodes reads per epoch (every
    ``world_size``-th shard from its rank), from the export's manifest. Where they differ, the nodes
    with more are still training when the others end the epoch, and a collective operation (DDP's
    gradient all-reduce) waits for good: stop every node at the smallest, e.g.
    ``pixmo_dataset(..., resampled=True).with_epoch(min(samples_per_node(...)))``."""
    from pixmo.export.manifest import read_manifest
    from pixmo.export.target import open_target

    if world_size < 1:
        raise ValueError("world_size must be at least 1")
    manifest = read_manifest(open_target(source))
    if split not in manifest["splits"]:
        raise ValueError(f"no split {split!r}; the export has {', '.join(manifest['splits'])}")
    samples = {s["name"]: int(s["samples"]) for s in manifest["shards"]}
    totals = [0] * world_size
    for i, name in enumerate(manifest["splits"][split]["shards"]):
        totals[i % world_size] += samples[name]
    return totals


# ----------------------------------------------------------------------------- S3 shards


@lru_cache(maxsize=None)
def _s3_store(bucket: str, pid: int):  # noqa: ANN202 - pid in the key: never reuse a client across fork
    from pixmo.config import get_settings
    from pixmo.storage import S3Store

    settings = get_settings()
    return S3Store(bucket, "", settings.s3_endpoint_url, settings.s3_region)


def _open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):  # noqa: ANN202
    if "r" not in mode:
        raise ValueError("s3:// shards are read-only here")
    bucket, _, key = url[len("s3://"):].partition("/")
    return _s3_store(bucket, os.getpid()).open(key)


def register_s3() -> None:
    """Let webdataset open ``s3://`` shard URLs through the toolkit's S3 store (idempotent)."""
    from webdataset.gopen import gopen_schemes

    gopen_schemes.setdefault("s3", _open_s3)


def _worker_init(_worker_id: int) -> None:
    register_s3()  # spawned workers start without the parent's registration


# ----------------------------------------------------------------------------- samples


def molmo_targets(record: dict[str, Any], caption: str = "") -> list[dict[str, str]]:
    """Training targets of one sample as ``{"task", "prompt", "text"}`` dicts, Molmo style.

    The caption (``caption``, the .txt member, when it is one of the record's usable captions, not
    a transcript it fell back to); the newest transcript of each recording; each point set as Molmo point text
    (``<point>``/``<points>``, ``There are none.`` when not present) or, for counting sets, a
    counting answer; each accepted QA pair (`pixmo.verdicts.usable_qa`). Rows rejected or flagged
    by a reviewer are left out.
    """
    verdicts = record_verdicts(record.get("reviews", []))

    def ok(kind: str, row_id: int) -> bool:
        return is_usable(verdicts, kind, row_id)

    out = []
    bad_captions = unusable_captions(record.get("captions", []), record.get("transcripts", []), verdicts)
    # the .txt falls back to a transcript when no caption is usable: that is speech, which the
    # transcript targets hold already, not a written caption
    if caption and any(c["text"].strip() == caption.strip() for c in record.get("captions", [])
                       if c["id"] not in bad_captions):
        out.append({"task": "caption", "prompt": PROMPTS["caption"], "text": caption})
    for t in newest_per_recording(usable_transcripts(record.get("transcripts", []), verdicts)):
        if t["text"].strip():
            out.append({"task": "transcript", "prompt": PROMPTS["transcript"], "text": t["text"]})
    for ps in record.get("point_sets", []):
        if not ok("point_set", ps["id"]):
            continue
        method = ps["method"]
        if ps["not_present"] or not ps["points"]:
            text = render_none()
        elif method == "counting":
            text = render_count(ps["points"], ps["label"])
        else:
            text = render_points(ps["points"], ps["label"])
        out.append({"task": method, "prompt": PROMPTS[method].format(label=ps["label"]), "text": text})
    for qa in usable_qa(record.get("qa", []), verdicts, bad_captions):
        out.append({"task": qa["source"], "prompt": qa["question"], "text": qa["answer"]})
    return out


def decode_image(data: bytes, mode: str = "tensor"):  # noqa: ANN201
    """Image bytes -> a uint8 ``3 x H x W`` tensor (``tensor``), an RGB PIL image (``pil``), or the bytes."""
    if mode == "bytes":
        return data
    from PIL import Image, ImageOps

    # not closed: closing an image read from memory frees nothing and makes it unusable, so it
    # would have to be copied out first (a copy of every image, as exif_transpose without in_place makes)
    im = Image.open(io.BytesIO(data))
    im.load()
    ImageOps.exif_transpose(im, in_place=True)  # as browsers show it, which is what the points were clicked on
    rgb = _as_rgb(im)
    if mode == "pil":
        return rgb
    import numpy as np
    import torch

    # a channels-first view of the HWC buffer, as torchvision's pil_to_tensor returns (a copy costs more)
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


_WIDE_GREY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# the background of the annotation app's image viewer (.viewer in annotation_app/static/app.css):
# what annotators saw through transparent pixels when they described and pointed
VIEWER_BACKGROUND = (17, 21, 28)


def _as_rgb(im):  # noqa: ANN001, ANN202 - PIL images
    """RGB as the annotators saw the image: 16-bit grey is scaled to 8 bits (Pillow's own
    conversion clips every value above 255, which turns most such images white), and transparent
    pixels show the viewer's background (a plain conversion drops alpha and shows whatever colour
    lies under them)."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    from PIL import Image

    if im.mode in _WIDE_GREY:  # scaled first: converted with its transparency, it too came out white
        import numpy as np

        raw = np.asarray(im, dtype=np.int64)
        grey = np.clip(raw, 0, 65535)
        eight = Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8), "L")
        key = im.info.get("transparency")
        if not isinstance(key, int):
            return eight.convert("RGB")
        alpha = Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8), "L")
        im = Image.merge("LA", (eight, alpha))
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*VIEWER_BACKGROUND, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def to_training_sample(raw: dict[str, Any], decode: str = "tensor", transform: Callable | None = None) -> dict[str, Any]:
    """A raw webdataset sample (bytes per member) -> image, caption, Molmo targets, record, audio."""
    from pixmo import fastjson

    record = fastjson.loads(raw["json"])
    ext = record["image"]["ext"]
    caption = raw["txt"].decode("utf-8") if "txt" in raw else ""
    try:
        image = decode_image(raw[ext], decode)
    except Exception as exc:
        exc.add_note(f"image of sample {raw['__key__']} in {raw.get('__url__')}")
        raise
    if transform is not None:
        image = transform(image)
    audio = {k: v for k, v in raw.items() if k.startswith("audio")}
    return {
        "__key__": raw["__key__"],
        "__url__": raw.get("__url__"),
        "image": image,
        "caption": caption,
        "targets": molmo_targets(record, caption),
        "json": record,
        "audio": audio,
    }


def pixmo_dataset(
    source: str | os.PathLike | Sequence[str],
    *,
    split: str = "train",
    shuffle: int = 1000,
    shardshuffle: int | bool | None = None,
    seed: int | None = None,
    decode: str = "tensor",
    transform: Callable | None = None,
    resampled: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
):  # noqa: ANN201 - a webdataset.WebDataset (a torch IterableDataset)
    """A ``webdataset.WebDataset`` over the shards of ``split``, yielding `to_training_sample` dicts.

    ``shuffle`` is the sample shuffle buffer (0: keep the key order); ``shardshuffle`` how many
    shards to shuffle (default: all when shuffling, none otherwise); ``seed`` makes both (and the
    shard draws of ``resampled``) repeatable, so every epoch repeats one order (webdataset mixes its
    own epoch count into resampled draws of a dataset iterated again in one process): pass
    ``seed + epoch`` for a new, still repeatable order per epoch; ``decode`` is ``tensor``, ``pil``
    or ``bytes``; ``transform`` is applied to the decoded image; ``resampled`` samples shards with replacement for endless training.
    ``rank`` and ``world_size`` say which node this is (every ``world_size``-th shard from ``rank``);
    without them webdataset reads ``RANK``/``WORLD_SIZE`` or torch.distributed.
    """
    import webdataset as wds

    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, not {decode!r}")
    urls = shard_urls(source, split)
    if any(u.startswith("s3://") for u in urls):
        register_s3()
    if shardshuffle is None:
        shardshuffle = max(1, len(urls)) if shuffle else False
    elif shardshuffle is True:
        shardshuffle = max(1, len(urls))
    # webdataset draws one seed when the dataset is made when given none, and so repeats one shard
    # order every epoch: without a seed the shards are shuffled here, afresh on every pass
    fresh_shard_order = bool(shardshuffle) and seed is None and not resampled
    dataset = wds.WebDataset(
        urls,
        shardshuffle=False if resampled or fresh_shard_order else shardshuffle,
        resampled=resampled,
        nodesplitter=_node_splitter(rank, world_size),
        workersplitter=wds.split_by_worker,
        empty_check=False,  # a worker may get no shard when there are fewer shards than workers
        seed=seed,
    )
    if fresh_shard_order:  # after the node and worker split, as webdataset's own shard shuffle
        dataset.pipeline.insert(dataset.pipeline.index(wds.split_by_worker) + 1, wds.filters.shuffle(shardshuffle))
    if resampled and seed is not None:
        # webdataset seeds its resampled shard draws from the clock unless told otherwise
        draws = dataset.pipeline[0]
        draws.seed, draws.deterministic = seed, True
    if shuffle:
        dataset = dataset.shuffle(shuffle, seed=seed)
    return dataset.map(_Decode(decode, transform))


class _NodeShards:
    """Every ``world_size``-th shard from ``rank`` (picklable: spawned DataLoader workers pickle it)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __call__(self, shards):  # noqa: ANN001, ANN204 - an iterator of webdataset's shard dicts
        for i, shard in enumerate(shards):
            if i % self.world_size == self.rank:
                yield shard


def _node_splitter(rank: int | None, world_size: int | None):  # noqa: ANN202
    import webdataset as wds

    if rank is None and world_size is None:
        return wds.split_by_node  # RANK/WORLD_SIZE, or torch.distributed
    if rank is None or world_size is None:
        raise ValueError("give both rank and world_size, or neither")
    if isinstance(rank, bool) or isinstance(world_size, bool) or not (
            isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be an integer in [0, world_size), and world_size at least 1; got rank={rank!r}, "
                         f"world_size={world_size!r}")
    return _NodeShards(rank, world_size)


class _Decode:
    """Picklable mapping step (spawned DataLoader workers pickle the pipeline)."""

    def __init__(self, decode: str, transform: Callable | None) -> None:
        self.decode, self.transform = decode, transform

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        return to_training_sample(raw, self.decode, self.transform)


def _tensor_image(sample: dict[str, Any]) -> dict[str, Any]:
    """An image that a ``transform`` left as a numpy array becomes a tensor, as torch's default would make it."""
    image = sample.get("image")
    if type(image).__module__ == "numpy" and getattr(image, "dtype", None) is not None and image.dtype.kind in "biufc":
        import torch

        sample["image"] = torch.as_tensor(image)
    return sample


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch as lists per field; images are stacked into one tensor when they share a shape."""
    samples = [_tensor_image(s) for s in samples]
    batch = {k: [s[k] for s in samples] for k in samples[0]}
    images = batch["image"]
    if images and hasattr(images[0], "shape") and all(im.shape == images[0].shape for im in images):
        import torch

        batch["image"] = torch.stack(images)
    return batch


def _hand_over(item: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
    """``collate_fn`` for one sample (or a worker's group of samples): only the image is converted
    (`_tensor_image`); nothing else is walked (the default converts every nested value of the
    record, a third of the loader's time)."""
    for sample in item if isinstance(item, list) else (item,):
        _tensor_image(sample)
    return item


def _warn_if_too_few_shards(shards: int, workers: int, nodes: int | None = None) -> int:
    """Warns when some node or worker gets no shard; returns the number of nodes."""
    from webdataset.utils import pytorch_worker_info

    nodes = nodes or pytorch_worker_info()[1]
    if shards < nodes * max(1, workers):
        warnings.warn(
            f"{shards} shard(s) for {nodes} node(s) x {max(1, workers)} worker(s): some get no samples (a node "
            "without any stalls distributed training); export with a smaller --maxcount", stacklevel=3,
        )
    return nodes


def _warn_if_uneven(totals: list[int]) -> None:
    if min(totals) != max(totals):
        warnings.warn(
            f"the {len(totals)} nodes read {min(totals)} to {max(totals)} samples per epoch: distributed training "
            "waits for good on the nodes still at work when the others end the epoch; stop each at the smallest "
            "(resampled=True and .with_epoch, see pixmo.data.samples_per_node)", stacklevel=3,
        )


def pixmo_loader(
    source: str | os.PathLike | Sequence[str],
    *,
    batch_size: int | None = None,
    num_workers: int = 2,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    **dataset_options: Any,
):  # noqa: ANN201 - a torch DataLoader (or a webdataset WebLoader over one)
    """A torch ``DataLoader`` over `pixmo_dataset` (options passed through); batches via `collate_samples`.

    ``persistent_workers``, ``pin_memory`` and ``prefetch_factor`` go to the DataLoader. A warning
    says when the split has fewer shards than nodes x workers (some would get no samples).

    With ``batch_size=None`` it yields one sample at a time; with workers, samples still travel
    from the workers in groups of `TRANSPORT_GROUP` (webdataset's batch-then-unbatch), since a
    DataLoader round trip per sample costs more than reading the sample. That loader is a
    ``webdataset.WebLoader`` wrapping the DataLoader; each worker keeps up to two groups in flight
    (``prefetch_factor`` counts groups), and consecutive samples come from one worker's shards in
    runs of up to 16 (the shuffle buffer works inside each worker, as before).
    """
    from torch.utils.data import DataLoader

    split = dataset_options.pop("split", "train")
    urls = shard_urls(source, split)
    if not dataset_options.get("resampled"):
        nodes = _warn_if_too_few_shards(len(urls), num_workers, dataset_options.get("world_size"))
        if nodes > 1 and not isinstance(source, (list, tuple)):
            _warn_if_uneven(samples_per_node(source, nodes, split))
    dataset = pixmo_dataset(urls, **dataset_options)
    extra = {"persistent_workers": persistent_workers, "pin_memory": pin_memory}
    if prefetch_factor is not None:
        extra["prefetch_factor"] = prefetch_factor
    if batch_size is None and num_workers > 0:
        import webdataset as wds

        grouped = dataset.batched(TRANSPORT_GROUP, collation_fn=None, partial=True)
        return wds.WebLoader(
            grouped, batch_size=None, num_workers=num_workers, collate_fn=_hand_over, worker_init_fn=_worker_init,
            **extra,
        ).unlisted()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_samples if batch_size is not None else _hand_over,
        worker_init_fn=_worker_init,
        **extra,
    )
