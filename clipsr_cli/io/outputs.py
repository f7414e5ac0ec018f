"""The one output policy: where results go, and that nothing is clobbered (torch-free).

* :func:`output_path_for`: the default name beside the input, ``<stem>_x<scale><ext>``.
* :func:`resolve_destination`: an ``output`` argument (a file, an existing folder, ``"-"`` for
  standard output, or None for the default) → the file to write, checked.
* :func:`check_destination`: the rule itself. The output folder must exist; a folder is no
  output file; an existing file, and the input itself, are replaced only with ``overwrite``
  (:class:`~clipsr_cli.errors.OutputExistsError`, whose ``path`` says which file: callers test
  the type, never the message).
* :func:`write_atomic` / :func:`write_bytes_atomic`: the write, through the one atomic writer
  (:mod:`clipsr_cli.io.atomic`), never clobbering without ``overwrite``, even when the file
  appears between the check and the write; :func:`write_stdout` for ``"-"``.
* A FIFO or character device as the output is a stream (written directly, never replaced);
  other special files are refused. The input itself is replaced only with ``overwrite_input``
  (which defaults to ``overwrite`` for callers that do not tell the two apart).

Messages name parameters in backticks (see :mod:`clipsr_cli.errors`); ``param`` names the
parameter that chose the path (``output`` unless told otherwise, e.g. ``report``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from clipsr_cli.errors import InputError, OutputExistsError, UsageError
from clipsr_cli.io.atomic import atomic_write, is_stream
from clipsr_cli.io.formats import IMAGE_EXTENSIONS, extension_for

__all__ = ["check_destination", "check_name", "check_report", "check_stdout", "is_kept", "output_path_for", "resolve_destination", "same_file",
           "write_atomic", "write_bytes_atomic", "write_stdout"]


#: Longest file name (bytes) on Linux, macOS and Windows file systems.
_NAME_MAX = 255


def check_name(path: str | os.PathLike[str], *, param: str = "output") -> None:
    """InputError when ``path``'s file name is longer than a file system allows (e.g. a
    derived ``<250-character stem>_x4.png``), before any work."""
    name = Path(path).name
    if len(os.fsencode(name)) > _NAME_MAX:
        raise InputError(f"the output name {name[:40]}… is {len(os.fsencode(name))} bytes, more "
                         f"than a file name may have ({_NAME_MAX}); choose a shorter `{param}`"
                         + (" or `suffix`" if param == "output" else ""))


def output_path_for(input_path: str | os.PathLike[str], scale: int, *, format: str | None = None,
                    suffix: str | None = None) -> Path:
    """Default output beside the input: ``<stem>_x<scale><ext>``.

    ``format`` picks the extension (else the input's own, or ``.png`` when the input is not a
    format clipsr writes, e.g. a GIF); ``suffix`` replaces ``_x<scale>`` (e.g. ``"_edited"``).
    """
    if suffix is not None and any(sep and sep in suffix for sep in ("/", os.sep, os.altsep, "\0")):
        raise UsageError(f"`suffix` {suffix!r} must not contain a path separator: it is appended "
                         "to each file name (choose the folder with `output`)", param="suffix")
    if os.fspath(input_path) == "-":
        raise InputError("reading from standard input (-) needs an explicit output: pass "
                         "`output=FILE` or `output=-`")
    p = Path(input_path)
    if format is not None:
        ext = extension_for(format)
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        ext = p.suffix
    else:
        ext = ".png"
    tag = f"_x{scale}" if suffix is None else suffix
    return p.with_name(f"{p.stem}{tag}{ext}")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str] | None) -> bool:
    """True if both name one existing file (hard links included); False for ``"-"``/``"<...>"``."""
    if b is None or os.fspath(b) == "-" or os.fspath(b).startswith("<"):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_kept(path: str | os.PathLike[str], keep: Iterable[str | os.PathLike[str] | None]) -> Path | None:
    """The entry of ``keep`` that ``path`` would replace, or None.

    ``keep``: the files of a run that no output may replace, whatever ``overwrite`` says (its
    inputs, caption and list files, the outputs it plans): an existing file is matched as the
    same file (hard links included), a planned one by its resolved path. Folders in ``keep``
    are ignored (a report may live beside the images it describes).
    """
    path = Path(path).expanduser()
    target = path.resolve()
    for k in keep:
        if k is None or os.fspath(k) in ("", "-") or os.fspath(k).startswith("<"):
            continue
        k = Path(k).expanduser()
        if not k.is_dir() and (same_file(path, k) or k.resolve() == target):
            return k
    return None


def check_destination(path: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None,
                      overwrite: bool, overwrite_input: bool | None = None,
                      param: str = "output", keep: Iterable = ()) -> Path:
    """Refuse ``path`` unless writing it is allowed; return it as a Path.

    InputError if its folder does not exist, it is a folder or a special file other than a
    FIFO / character device (those are streams: always allowed); OutputExistsError if it exists
    and not ``overwrite``, or is ``source`` (the input) and not ``overwrite_input`` (None: as
    ``overwrite``), or is one of ``keep`` (see :func:`is_kept`: no flag covers those).
    """
    path = Path(path)
    check_name(path, param=param)
    if (kept := is_kept(path, keep)) is not None:
        raise OutputExistsError(f"refusing to replace {kept}: it is an input of this run (or "
                                f"another of its outputs); choose another `{param}`", path=path)
    what = "output" if param == "output" else f"`{param}`"
    if not path.parent.is_dir():
        raise InputError(f"{what} folder {path.parent} does not exist; create it first")
    if path.is_dir():
        name = "out.png" if param == "output" else f"{param}.json"
        raise InputError(f"{path} is a folder; give {what} a file name such as {path / name}")
    if is_stream(path):
        return path
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a regular file (a device or socket); choose another "
                         f"`{param}`")
    if same_file(path, source):
        if overwrite_input is None and not overwrite:
            raise OutputExistsError(f"refusing to overwrite the input {path}; choose another "
                                    f"`{param}`, or pass `overwrite=True`", path=path)
        if overwrite_input is False:
            raise OutputExistsError(f"refusing to overwrite the input {path}; choose another "
                                    f"`{param}`, or pass `overwrite_input=True` to replace it",
                                    path=path)
        return path
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path} exists; pass `overwrite=True` to replace it or choose "
                                f"another `{param}`", path=path)
    return path


def check_report(path: str | os.PathLike[str], *, keep: Iterable = (), overwrite: bool = True,
                 param: str = "report") -> Path:
    """A report's path, judged before any work starts: the output rule of
    :func:`check_destination`, with ``keep`` (the run's inputs, caption/list files and planned
    outputs: a report never replaces one, ``overwrite`` or not). A path that can never work (its
    folder missing, a folder, a device) is a UsageError (exit status 2); an old report is
    replaced unless ``overwrite=False``."""
    path = Path(path).expanduser()
    try:
        return check_destination(path, overwrite=overwrite, param=param, keep=keep)
    except OutputExistsError:
        raise
    except InputError as e:
        raise UsageError(str(e), param=param) from None


def resolve_destination(input: str | os.PathLike[str], output: str | os.PathLike[str] | None,
                        scale: int, *, format: str | None = None, overwrite: bool = False,
                        overwrite_input: bool | None = None,
                        suffix: str | None = None) -> Path | None:
    """Where the result of ``input`` goes: None for standard output (``output="-"``).

    ``output`` None: :func:`output_path_for` beside the input; an existing folder: that name in
    the folder; else the file itself. Checked with :func:`check_destination`.
    """
    input = os.fspath(input)
    if output is not None and os.fspath(output) == "-":
        return None  # in `format`, else the input's (io.formats.format_for)
    if output is None:
        dest = output_path_for(input, scale, format=format, suffix=suffix)
    else:
        dest = Path(output).expanduser()
        if dest.is_dir():
            ref = input if input != "-" else "stdin.png"
            dest = dest / output_path_for(ref, scale, format=format, suffix=suffix).name
    return check_destination(dest, source=None if input == "-" else input, overwrite=overwrite,
                             overwrite_input=overwrite_input)


def write_atomic(path: str | os.PathLike[str], encode: Callable[[BinaryIO], None], *,
                 overwrite: bool, param: str = "output") -> Path:
    """Write ``path`` through ``encode(file)`` atomically (nothing partial is ever left).

    Without ``overwrite`` an existing file is never replaced, even one that appeared after
    :func:`check_destination` (OutputExistsError); a failed write is an InputError.
    """
    path = Path(path)
    try:
        return atomic_write(path, encode, overwrite=overwrite)
    except FileExistsError:
        raise OutputExistsError(f"{path} exists; pass `overwrite=True` to replace it or choose "
                                f"another `{param}`", path=path) from None
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; check the free space and "
                         "permissions of the output folder") from e


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool,
                       param: str = "output") -> Path:
    """:func:`write_atomic` of ``data``."""
    return write_atomic(path, lambda f: f.write(data), overwrite=overwrite, param=param)


def check_stdout(*, what: str = "image data") -> None:
    """InputError if standard output is a terminal (binary data would garble it)."""
    isatty = getattr(sys.stdout, "isatty", None)
    if isatty and isatty():
        raise InputError(f"refusing to write {what} to a terminal; redirect standard output "
                         "(> out.png) or pass `output=FILE`")


def write_stdout(data: bytes, *, what: str = "image data") -> None:
    """Write ``data`` to standard output; refused when it is a terminal."""
    check_stdout(what=what)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
