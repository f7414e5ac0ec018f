"""Named exceptions, the library's log, and how messages name parameters.

Every user-facing failure is one of these exceptions; the CLI turns it into one line on stderr and
the exception's ``exit_code``. Each message says what went wrong *and* what to do next, in
library terms: a parameter is written in backticks, as a keyword argument (```overwrite=True```,
```tile=128```, ```device='cpu'```) or as a bare name (```tile_overlap```). The CLI rewrites these to
its flags (``--overwrite``, ``--tile 128``, ``--device cpu``, ``--tile-overlap``) with
``clipsr_cli.cli.render``; a Python caller reads them as the keyword arguments they are.

Nothing below ``clipsr_cli.cli`` prints: library code reports progress through callbacks and
notes/warnings through :data:`log` (the ``logging`` logger ``"clipsr"``), which the CLI renders
and a library user may route wherever they like.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

#: The library's logger. ``info`` for what a run did, ``warning`` for what a user should know.
log = logging.getLogger("clipsr")
log.addHandler(logging.NullHandler())


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal: ``signum`` is ``signal.SIGINT`` (Ctrl-C) or
    ``signal.SIGTERM``.

    A ``KeyboardInterrupt``, so everything that cleans up after Ctrl-C (temporary files removed,
    a training checkpoint written) does so for SIGTERM too. The CLI, once everything has unwound,
    ends the process *by this signal* (``clipsr_cli.cli.signals``), as Unix tools do, so that a
    shell loop or script running ``clipsr`` stops as well.
    """

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


class ClipsrError(Exception):
    """Base class of every error clipsr reports to a user (exit status 1)."""

    exit_code = 1


class UsageError(ClipsrError):
    """A parameter has a value that can never work (exit status 2, like a bad command line).

    ``param`` names the parameter (its Python name), so the CLI can point at its flag.
    """

    exit_code = 2

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class InputError(ClipsrError):
    """A user input (image file, path, option value) cannot be used."""


class OutputExistsError(InputError):
    """An output file exists and replacing it was not asked for (or it is the input itself)."""

    def __init__(self, message: str, *, path: str | Path):
        super().__init__(message)
        self.path = Path(path)


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


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: MemoryError, or the RuntimeError torch raises
    (``[enforce fail at alloc_cpu.cpp] ... can't allocate memory``, CUDA out of memory)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory",
                            "defaultcpuallocator", "bad_alloc"))


def summary(e: BaseException, limit: int = 200) -> str:
    """A third-party error in one whole line: its first line, cut at a word (with …) when
    longer than ``limit``; an allocation failure in words instead of an allocator's trace."""
    if is_out_of_memory(e):
        return "not enough memory"
    lines = str(e).strip().splitlines()
    first = lines[0].strip() if lines else type(e).__name__
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return first
