"""Drawing point sets over an image, one colour per label (Pillow)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

from PIL import ImageDraw

from pixmo.data import decode_image

# Tableau 10: distinct, readable on photos and flat backgrounds alike.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def label_colors(labels: Iterable[str]) -> dict[str, str]:
    """A stable colour per distinct label (sorted order, palette cycles after ten labels)."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(sorted(set(labels)))}


def draw_point_sets(image_bytes: bytes, point_sets: Iterable[Mapping[str, Any]], max_side: int = 1024) -> tuple[bytes, dict[str, str]]:
    """The image (shrunk to ``max_side``) as PNG with every point drawn as a ring in its label's
    colour, and the label → colour legend. Points are normalised [x, y] in [0, 1]."""
    sets = [ps for ps in point_sets if ps.get("points")]
    colors = label_colors(ps["label"] for ps in sets)
    im = decode_image(image_bytes, "pil")  # as browsers show it (EXIF orientation), RGB
    im.thumbnail((max_side, max_side))
    draw = ImageDraw.Draw(im)
    radius = max(6, round(min(im.size) * 0.025))
    width = max(3, radius // 3)
    dot = max(2, radius // 4)
    for ps in sets:
        color = colors[ps["label"]]
        for x, y in ps["points"]:
            cx, cy = float(x) * im.width, float(y) * im.height
            # colour ring between a dark and a light edge: visible on any background
            draw.ellipse((cx - radius - 2, cy - radius - 2, cx + radius + 2, cy + radius + 2), outline="black", width=width + 4)
            draw.ellipse((cx - radius - 1, cy - radius - 1, cx + radius + 1, cy + radius + 1), outline="white", width=width + 2)
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=color, width=width)
            draw.ellipse((cx - dot, cy - dot, cx + dot, cy + dot), fill=color, outline="black")
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue(), colors
