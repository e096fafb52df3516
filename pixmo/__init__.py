"""PixMo toolkit: collect and curate PixMo-style vision-language data."""

__version__ = "0.1.0"
