"""Library messages → command-line words.

Library messages name parameters in backticks as Python sees them (``overwrite=True``,
``tile=128``, ``device='cpu'``, ``tile_overlap``); see :mod:`clipsr_cli.errors`. Here each is
rewritten to the flag of the running command that has that parameter name (``--overwrite``,
``--tile 128``, ``--device cpu``, ``--tile-overlap``). A name the command does not have keeps
its Python spelling, without the backticks.
"""

from __future__ import annotations

import re
from typing import Mapping

_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


def flag_names(command) -> dict[str, str]:
    """{python name: longest flag} of a click command's options (e.g. ``{'tile': '--tile'}``)."""
    out: dict[str, str] = {}
    for p in getattr(command, "params", ()):
        opts = [o for o in getattr(p, "opts", ()) if o.startswith("--")]
        if opts and p.name:
            out[p.name] = max(opts, key=len)
    return out


def _value(raw: str) -> str:
    v = raw.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        v = v[1:-1]
    return v


def to_cli(message: str, flags: Mapping[str, str]) -> str:
    """Rewrite every ```name``` / ```name=value``` in ``message`` with ``flags``."""

    def sub(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        flag = flags.get(name)
        if flag is None:
            return name if value is None else f"{name}={value}"
        if value is None:
            return flag
        v = _value(value)
        if v == "True":
            return flag
        if v == "False":
            return f"--no-{flag[2:]}"
        return f"{flag} {v}"

    return _PARAM.sub(sub, message)


def plain(message: str) -> str:
    """The message for a Python reader: backticks dropped, keyword spelling kept."""
    return to_cli(message, {})
