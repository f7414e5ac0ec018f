"""``clipsr inspect``: what a model file (or registered name) is, without running it."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsr_cli.cli import completion


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_(
        model: Annotated[str, typer.Argument(
            help="Model file (clipsr .safetensors, or a third-party SR .pth/.safetensors that "
            "spandrel recognises: Real-ESRGAN, SwinIR, HAT, DAT, SPAN, OmniSR, ...) or a "
            "registered name.", show_default=False, autocompletion=completion.models)],
        verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                              help="Tracebacks on errors.")] = False,
    ) -> None:
        """Show a model's architecture, scale, channels, parameters, precisions, size
        requirements and tile overlap."""
        from clipsr_cli.cli.console import configure

        configure(verbose=verbose)
        rows = describe(model)
        width = max(18, *(len(k) + 1 for k, _ in rows))
        for key, value in rows:
            typer.echo(f"{key + ':':<{width}} {value}")


def describe(model) -> list[tuple[str, str]]:
    """(field, value) lines describing ``model`` (see :func:`clipsr_cli.tasks.inspect.describe`)."""
    from clipsr_cli.tasks.inspect import describe as describe_model

    return _rows(describe_model(model))


def _rows(d) -> list[tuple[str, str]]:
    from clipsr_cli.tasks.inspect import PipelineDescription

    if isinstance(d, PipelineDescription):
        rows = [("name", d.name), ("format", "pipeline (registry entry, no file of its own)"),
                ("scale", f"×{d.scale}"), ("stages", " → ".join(d.stages))]
        for name, stage in d.models:
            rows += [(f"{name} {k}", v) for k, v in _rows(stage)]
        return rows
    info = d.info
    rows = [("file", str(d.file)), ("format", d.format), ("architecture", d.architecture),
            ("purpose", d.purpose)]
    if d.text_guided is None:  # third-party
        rows.append(("tags", ", ".join(d.tags) or "-"))
    rows.append(("channels", d.channels))
    if d.text_guided is not None:
        rows.append(("text-guided", d.text_guided))
    rows += [("scale", f"×{info.scale}"), ("parameters", f"{info.parameters:,}"),
             ("precisions", ", ".join(info.precisions)), ("size requirements", d.size_requirements),
             ("pad multiple", str(info.pad_multiple)),
             ("tile overlap", f"{info.tile_overlap} LR px (default --tile-overlap)")]
    if d.window_size:
        rows.append(("window size", str(d.window_size)))
    if d.tiling_advice is not None:
        rows.append(("tiling advice", d.tiling_advice))
    return rows
