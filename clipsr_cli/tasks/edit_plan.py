"""Where ``edit`` writes: every output name, checked before any work (torch-free).

The names (``clipsr edit`` documents them): default ``<stem>_edit.<ext>`` beside the input, a
sweep ``<stem>_edit_<i>.<ext>``, a folder or a file name as ``output``, ``"-"`` for standard
output; ``<base>_grid.png`` and ``<base>.gif`` beside them. The rule is the output policy's
(:func:`clipsr_cli.io.outputs.check_destination`). A folder named with a trailing separator
that does not exist yet is created (parents too) just before the first write
(:meth:`EditPlan.make_folder`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipsr_cli.errors import InputError, UsageError
from clipsr_cli.io.formats import format_for, is_image_path
from clipsr_cli.io.outputs import check_destination, check_report, output_path_for

__all__ = ["EditPlan", "plan_outputs"]


@dataclass(frozen=True)
class EditPlan:
    outputs: tuple[Path | None, ...]  # one per strength; None: standard output
    grid: Path | None = None
    gif: Path | None = None
    report: Path | None = None
    create: Path | None = None  # the output folder to create before writing (``output="DIR/"``)

    def paths(self) -> list[Path]:
        return [p for p in (*self.outputs, self.grid, self.gif, self.report) if p is not None]

    def make_folder(self) -> None:
        """Create the output folder ``create`` (parents too) if there is one; a no-op otherwise."""
        if self.create is not None:
            try:
                self.create.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot create the output folder {self.create}: "
                                 f"{e.strerror or e}") from None


def plan_outputs(input: str, output: str | None, n: int, *, format: str | None = None,
                 grid: bool = False, gif: bool = False, report: str | None = None,
                 overwrite: bool = False, overwrite_input: bool = False) -> EditPlan:
    """Every path ``edit`` will write, checked before any work (the output policy,
    :func:`clipsr_cli.io.outputs.check_destination`).

    Default: ``<stem>_edit.<ext>`` beside the input; with ``n`` > 1 ``<stem>_edit_<i>.<ext>``
    (i zero-padded from 0). ``output`` an existing folder, or a name ending in ``/``: the same
    names there (a missing ``DIR/`` is created, parents too, when the results are written; it
    is only checked here). A file name: that file, or ``FILE_<i>.ext`` for a sweep. ``"-"``:
    standard output (one result, no grid/GIF). Grid: ``<base>_grid.png``; GIF: ``<base>.gif``. Existing
    files are refused unless ``overwrite``, the input itself unless ``overwrite_input``.
    """
    if output == "-":
        if n > 1 or grid or gif:
            raise UsageError("`output=-` (standard output) takes one result; drop `sweep`, "
                             "`grid` and `gif` or write to files", param="output")
        return EditPlan((None,), report=_report_path(report, overwrite, input=input))
    if output is None and input == "-":
        raise InputError("reading from standard input (-) needs `output=FILE` or `output=DIR/`")
    stem = Path(input).stem if input != "-" else "stdin"
    ext = output_path_for(input if input != "-" else "stdin.png", 1, format=format,
                          suffix="").suffix
    create = None
    if output is None:
        folder, base, single = Path(input).parent, f"{stem}_edit", None
    else:
        out = Path(output).expanduser()
        if out.is_dir() or output.endswith(("/", os.sep)):
            folder, base, single = out, f"{stem}_edit", None
            if not out.is_dir():
                _check_creatable(out)
                create = out
        else:
            if not is_image_path(out) and format is None:
                format_for(out)  # says which extensions work
            folder, base, single = out.parent, out.stem, out
            ext = out.suffix or ext
    if create is None and not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist; create it first")
    if n == 1:
        outputs = (single if single is not None else folder / f"{base}{ext}",)
    else:
        width = len(str(n - 1))
        outputs = tuple(folder / f"{base}_{i:0{width}d}{ext}" for i in range(n))
    plan = EditPlan(outputs, folder / f"{base}_grid.png" if grid else None,
                    folder / f"{base}.gif" if gif else None,
                    _report_path(report, overwrite, create, input=input), create)
    paths = plan.paths()
    if len(set(paths)) != len(paths):
        raise InputError("two outputs would have the same name; choose another `output`")
    for p in paths:
        if create is not None and p.parent == create:
            continue  # a new folder: nothing in it can exist yet
        check_destination(p, source=None if input == "-" else input, overwrite=overwrite,
                          overwrite_input=overwrite_input,
                          param="report" if p == plan.report else "output",
                          keep=(input,) if p == plan.report else ())
    return plan


def _check_creatable(folder: Path) -> None:
    """Refuse a folder to create when something on its path is a file (it could never work)."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot create the output folder {folder}: {parent} is a "
                                 "file; choose another `output`")
            return


def _report_path(report: str | None, overwrite: bool, create: Path | None = None, *,
                 input: str) -> Path | None:
    """The report never replaces the input (not even with `overwrite_input`)."""
    if report is None:
        return None
    path = Path(report).expanduser()
    if create is not None and path.parent == create:
        return path  # goes into the output folder that will be created
    return check_report(path, overwrite=overwrite, keep=(input,))
