"""Named exceptions. Every user-facing failure is one of these; the CLI turns it into one line.

Each message says what went wrong *and* what to do next.
"""

from __future__ import annotations


class ClipsrError(Exception):
    """Base class of every error clipsr reports to a user (exit status 1)."""

    exit_code = 1


class InputError(ClipsrError):
    """A user input (image file, path, option value) cannot be used."""


class ModelError(ClipsrError):
    """A model or checkpoint cannot be found, read or used."""


class DeviceError(ClipsrError):
    """The requested device or precision is not available."""


class DownloadError(ClipsrError):
    """A download failed or a downloaded file failed verification."""


class DataError(ClipsrError):
    """A training/evaluation dataset is missing, empty or malformed."""


class TrainingError(ClipsrError):
    """Training cannot continue (NaN loss, incompatible resume, ...)."""
