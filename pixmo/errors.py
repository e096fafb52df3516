"""Exceptions the library raises; callers (CLI, app) turn them into messages."""


class PixmoError(Exception):
    """Base class for every error the toolkit raises on purpose."""


class ConfigError(PixmoError):
    """A setting is missing or unsafe."""


class StorageError(PixmoError):
    """A blob could not be stored, read or addressed."""


class InvalidKeyError(StorageError, ValueError):
    """A blob key is malformed or tries to escape the store's root."""


class BlobNotFoundError(StorageError, KeyError):
    """No blob under that key."""


class NotFoundError(PixmoError, LookupError):
    """A named row (user, project, image) does not exist."""


class ValidationError(PixmoError, ValueError):
    """Input was rejected; the message says why."""
