"""Errors of the exporters (subclasses of `pixmo.errors.PixmoError`, so the CLI reports them)."""

from pixmo.errors import PixmoError


class ExportError(PixmoError):
    """An export could not be written: a blob is missing or corrupt, or the database changed under it."""


class ManifestError(ExportError):
    """An export folder has no readable manifest (not an export, or an export that did not finish)."""
