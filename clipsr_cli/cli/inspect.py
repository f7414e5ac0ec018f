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
    """(field, value) lines describing ``model`` (a model string or a reference)."""
    from clipsr_cli.errors import ModelError
    from clipsr_cli.hub.resolve import ClipRef, ForeignFile, PipelineRef, Registered, resolve
    from clipsr_cli.model.foreign import load_foreign

    ref = resolve(model)
    if isinstance(ref, PipelineRef):  # e.g. the built-in x8 and x16
        entry = ref.entry
        rows = [("name", entry.name), ("format", "pipeline (registry entry, no file of its own)"),
                ("scale", f"×{entry.scale}"), ("stages", " → ".join(entry.stages))]
        for stage in {s.name: s for s in ref.stages if isinstance(s, Registered)}.values():
            rows += [(f"{stage.name} {k}", v) for k, v in describe(stage)]
        return rows
    if isinstance(ref, ClipRef):
        raise ModelError(f"{ref.name!r} is a CLIP backbone, not an upscaling model; choose a "
                         "generator from 'clipsr models'")
    if isinstance(ref, Registered):
        ref = ref.file()
    path = ref.path
    rows = [("file", str(path))]
    if isinstance(ref, ForeignFile):
        m = load_foreign(path, format=ref.format)
        spec, info = m.spec, m.info
        channels = "RGB → RGB" if spec.input_channels == 3 else "grayscale → grayscale (per channel)"
        req = [f"multiple of {spec.size_multiple}"] if spec.size_multiple > 1 else []
        req += [f"at least {spec.size_minimum} px"] if spec.size_minimum else []
        req += ["square"] if spec.square else []
        rows += [("format", "third-party (spandrel)"),
                 ("architecture", f"{spec.architecture} ({spec.arch_id})"),
                 ("purpose", spec.purpose), ("tags", ", ".join(spec.tags) or "-"),
                 ("channels", channels)]
        size = ", ".join(req) or "none"
        extra = [("window size", str(spec.window_size))] if spec.window_size else []
        extra.append(("tiling advice", spec.tiling))
    else:
        from clipsr_cli.model.checkpoint import read_checkpoint
        from clipsr_cli.model.network import CLIPSR

        config, _, meta = read_checkpoint(path)
        info = CLIPSR(config).info
        rows += [("format", f"clipsr checkpoint (format {meta.get('format_version', '?')})"),
                 ("architecture", "CLIPSR"), ("purpose", "SR"), ("channels", "RGB → RGB"),
                 ("text-guided", f"yes ({info.clip})" if info.text_conditioned else "no")]
        size = f"multiple of {info.pad_multiple} (padded by the engine)"
        extra = []
    rows += [("scale", f"×{info.scale}"), ("parameters", f"{info.parameters:,}"),
             ("precisions", ", ".join(info.precisions)), ("size requirements", size),
             ("pad multiple", str(info.pad_multiple)),
             ("tile overlap", f"{info.tile_overlap} LR px (default --tile-overlap)"), *extra]
    return rows
