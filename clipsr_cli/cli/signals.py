"""Ctrl-C and SIGTERM: clean up, then end *killed by the signal*, as Unix tools do.

A shell learns that a command was stopped by Ctrl-C from its wait status: a child that *exits*
130 looks like a program that handled SIGINT itself and chose to go on, so bash runs the next
iteration of ``for d in ...; do clipsr batch "$d" ...; done``; a child *killed by* SIGINT makes
the loop (and a script) stop too (bash's "wait and cooperative exit"). So:

- :func:`handling` (around the whole app, in ``main``) turns SIGINT and SIGTERM into
  :class:`~clipsr_cli.errors.Interrupted`, a ``KeyboardInterrupt``: every command already cleans
  up after one (temporary files removed, writes in flight finished atomically, a training
  checkpoint written), and remembers which signal came. A signal that was ignored when clipsr
  started (a background job of a non-interactive shell, ``nohup``) stays ignored.
- :func:`die` then restores the default handler and sends the signal again, once everything has
  unwound; the shell sees "killed by SIGINT" (``$?`` = 130) or "killed by SIGTERM" (143).

Commands need nothing of their own: the app's error handler prints ``interrupted`` and exits 130
(what ``CliRunner`` tests see); :func:`main <clipsr_cli.cli.app.main>` does the rest. Training
keeps its own SIGTERM handler while it runs (stop at a step boundary, the same on every rank) and
raises ``Interrupted(SIGTERM)`` itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

from clipsr_cli.errors import Interrupted

_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))
received: int | None = None  # the signal that stopped this run, if any


def note(signum: int) -> None:
    """Remember that ``signum`` stopped the run (also for an ``Interrupted`` raised elsewhere)."""
    global received
    if received is None:
        received = signum


def _handler(signum, frame) -> None:
    note(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGINT/SIGTERM raise ``Interrupted`` inside; the previous handlers come back after."""
    global received
    received = None
    old = {}
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_IGN, None):  # ignored by whoever started us: keep it so
            continue
        if current not in (signal.SIG_DFL, signal.default_int_handler):
            continue  # someone else's handler (an embedding program): not ours to replace
        try:
            old[sig] = signal.signal(sig, _handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def die() -> None:
    """If a signal stopped the run, end this process by that signal (default handler); else
    return."""
    if received is None or os.name == "nt":  # Windows has no "killed by a signal" status
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(received, signal.SIG_DFL)
    os.kill(os.getpid(), received)  # delivered at once: the process ends here
