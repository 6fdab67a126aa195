"""Exceptions that name the file and what is wrong with it."""

from __future__ import annotations


class VaestError(Exception):
    """Base class: a message meant for the user, naming the offending file where there is one."""


class MediaError(VaestError):
    """A media file cannot be opened or decoded."""


class LabelError(VaestError):
    """An annotation file is missing, malformed or inconsistent with its video."""


class CorpusError(VaestError):
    """A corpus folder or manifest is not in a layout vaest understands."""


class FeatureError(VaestError):
    """Stored features are missing, stale or malformed."""


class ModelError(VaestError):
    """A model or checkpoint cannot be loaded or does not fit the data."""
