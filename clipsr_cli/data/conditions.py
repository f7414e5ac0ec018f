"""What ``clipsr eval --degrade`` is told: the LR file conditions (``clean``, ``jpeg:Q``,
``noise:S``) as typed values. Torch-free, so that a wrong ``--degrade`` is a usage error before
torch is imported (issue #22, item 4); the files themselves are made in
:mod:`clipsr_cli.data.lr_file`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from clipsr_cli.errors import UsageError

__all__ = ["FileDegradation", "parse_degradations"]

Kind = Literal["clean", "jpeg", "noise"]
_SPEC = re.compile(r"^\s*(clean|jpeg|noise)\s*(?::\s*([0-9]+(?:\.[0-9]*)?)\s*)?$", re.IGNORECASE)


def _show(v) -> str:
    """A level for a message: 75, 2.5, None."""
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)


@dataclass(frozen=True)
class FileDegradation:
    """How the LR file is made: ``clean``, ``jpeg`` at ``level`` = quality (1-100, whole), or
    ``noise`` at ``level`` = Gaussian std in 0-255 units (0-100). ``str()`` gives the spec back
    (``"jpeg:75"``, ``"noise:5"``, ``"clean"``)."""

    kind: Kind = "clean"
    level: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "clean":
            if self.level is not None:
                raise UsageError("`degrade` clean takes no level (use clean, jpeg:Q or noise:S)",
                                 param="degrade")
        elif self.kind == "jpeg":
            q = self.level
            if q is None or q != int(q) or not 1 <= q <= 100:
                raise UsageError(f"`degrade` jpeg needs a whole quality 1-100 (jpeg:75), got "
                                 f"{_show(q)}", param="degrade")
            object.__setattr__(self, "level", int(q))
        elif self.kind == "noise":
            s = self.level
            if s is None or not math.isfinite(s) or not 0 <= s <= 100:
                raise UsageError(f"`degrade` noise needs a std 0-100 in 0-255 units (noise:5), got "
                                 f"{_show(s)}", param="degrade")
            object.__setattr__(self, "level", float(s))
        else:
            raise UsageError(f"`degrade` must be clean, jpeg:Q or noise:S, not {self.kind!r}",
                             param="degrade")

    @classmethod
    def parse(cls, spec: str | FileDegradation) -> FileDegradation:
        """``"clean"``, ``"jpeg:75"``, ``"noise:5"`` (case and spaces ignored) → the value."""
        if isinstance(spec, FileDegradation):
            return spec
        m = _SPEC.match(str(spec))
        if m is None:
            raise UsageError(f"`degrade` must be clean, jpeg:Q (quality 1-100) or noise:S (std in "
                             f"0-255 units), not {spec!r}", param="degrade")
        kind, level = m.group(1).lower(), m.group(2)
        if kind != "clean" and level is None:
            raise UsageError(f"`degrade` {kind} needs a level: {kind}:"
                             f"{'75' if kind == 'jpeg' else '5'}", param="degrade")
        return cls(kind, None if level is None else float(level))  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.kind == "clean":
            return "clean"
        return f"{self.kind}:{_show(self.level)}"


def parse_degradations(specs: str | Sequence[str] | None) -> list[FileDegradation]:
    """Conditions from repeated values and/or comma lists (``["clean,jpeg:75", "noise:5"]``), in
    order, duplicates dropped; nothing given → ``[clean]``."""
    if specs is None:
        specs = []
    elif isinstance(specs, str):
        specs = [specs]
    out: list[FileDegradation] = []
    for s in specs:
        for part in str(s).split(","):
            if not part.strip():
                continue
            d = FileDegradation.parse(part)
            if d not in out:
                out.append(d)
    return out or [FileDegradation()]
