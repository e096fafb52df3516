"""Data formats at the edges: point coordinates and Molmo point text.

The PixMo Hugging Face row schemas live in `schemas.pixmo_hf` (the data contracts package).
"""

from pixmo.formats.points import *  # noqa: F403 - the public names are those of `points.__all__`
from pixmo.formats.points import __all__  # noqa: F401
