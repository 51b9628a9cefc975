"""Errors a user can cause (bad checkpoint, bad request): clear messages, no traceback soup.

Everything the engine raises on purpose derives from `BailingError`; callers (CLI, workers) catch it
and show the message alone.
"""


class BailingError(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(BailingError, ValueError):
    """A model folder is unusable: missing/corrupt files, unknown keys, wrong shapes, bad config."""


class TokenizerError(BailingError, ValueError):
    """The request needs text but the model folder has no usable tokenizer."""


class RequestError(BailingError, ValueError):
    """A request's inputs or sampling parameters are invalid."""
