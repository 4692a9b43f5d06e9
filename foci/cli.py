"""Command line: ``foci generate``, ``foci metadata``, ``foci dev make-checkpoint``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from foci import __version__
from foci.task import SAMPLERS, SCHEDULERS, GenerationTask


class CliError(Exception):
    """An error shown to the user as one line."""


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "__root__")
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    defaults = GenerationTask()
    gen = sub.add_parser("generate", help="generate images from a prompt (no server needed)")
    gen.add_argument("prompt", help="the prompt; several lines become separate items")
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--seed", type=int, default=None, help="seed of the first image (random if omitted)")
    gen.add_argument("--image-number", type=int, default=defaults.image_number)
    gen.add_argument("--aspect", default=defaults.aspect_ratio, help="WIDTH*HEIGHT, e.g. 1152*896")
    gen.add_argument("--steps", type=int, default=defaults.steps)
    gen.add_argument("--cfg", type=float, default=defaults.guidance_scale, help="guidance scale")
    gen.add_argument("--sharpness", type=float, default=defaults.sharpness)
    gen.add_argument("--sampler", default=defaults.sampler, help=f"one of: {', '.join(SAMPLERS)}")
    gen.add_argument("--scheduler", default=defaults.scheduler, help=f"one of: {', '.join(SCHEDULERS)}")
    gen.add_argument("--clip-skip", type=int, default=defaults.clip_skip)
    gen.add_argument("--adaptive-cfg", type=float, default=defaults.adaptive_cfg, help="CFG mimicking scale")
    gen.add_argument("--model", default="", help="base SDXL checkpoint: a path or a name in models/checkpoints")
    gen.add_argument("--refiner", default=None, help="refiner checkpoint (path or name)")
    gen.add_argument("--refiner-switch", type=float, default=defaults.refiner_switch)
    gen.add_argument("--refiner-swap-method", choices=("joint", "separate"), default="joint")
    gen.add_argument("--vae", default=None, help="VAE file overriding the checkpoint's VAE")
    gen.add_argument("--freeu", action="store_true", help="enable FreeU (b1 1.01, b2 1.02, s1 0.99, s2 0.95)")
    gen.add_argument("--sag", type=float, default=0.0, help="Self-Attention Guidance scale (0 = off)")
    gen.add_argument("--perp-neg", type=float, default=0.0, help="Perp-Neg scale (0 = off)")
    gen.add_argument("--format", choices=("png", "jpeg", "webp"), default="png")
    gen.add_argument("--metadata-scheme", choices=("fooocus", "a1111"), default="fooocus")
    gen.add_argument("--no-metadata", action="store_true", help="do not embed metadata in images")
    gen.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                     help="fp32 reproduces Fooocus exactly; auto picks bf16/fp16 where fast")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    gen.add_argument("--models-dir", default=os.environ.get("FOCI_MODELS_DIR", "models"))
    gen.add_argument("--output-dir", default=os.environ.get("FOCI_OUTPUT_DIR", "outputs"))
    gen.add_argument("--debug-dump", default=None, metavar="DIR",
                     help="write noise, sigmas, conds, final latent, prompts and settings to DIR")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")


def _task_from_args(args: argparse.Namespace) -> GenerationTask:
    seed = args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") % (2**63)
    try:
        return GenerationTask(
            prompt=args.prompt, negative_prompt=args.negative, seed=seed, image_number=args.image_number,
            aspect_ratio=args.aspect, steps=args.steps, guidance_scale=args.cfg, sharpness=args.sharpness,
            sampler=args.sampler, scheduler=args.scheduler, clip_skip=args.clip_skip,
            adaptive_cfg=args.adaptive_cfg, base_model=args.model, refiner_model=args.refiner,
            refiner_switch=args.refiner_switch, refiner_swap_method=args.refiner_swap_method, vae=args.vae,
            freeu={"enabled": args.freeu}, sag_scale=args.sag, perp_neg_scale=args.perp_neg,
            output_format=args.format, metadata_scheme=args.metadata_scheme, save_metadata=not args.no_metadata,
            precision=args.precision)
    except ValidationError as error:
        raise CliError(_validation_message(error)) from None
    except ValueError as error:
        raise CliError(str(error)) from None


def _run_generate(args: argparse.Namespace) -> int:
    task = _task_from_args(args)
    from tqdm import tqdm

    from foci.pipeline import Engine, ProgressEvent

    engine = Engine(models_dir=Path(args.models_dir), output_dir=Path(args.output_dir), device=args.device,
                    precision=args.precision)
    bars: dict[int, tqdm] = {}

    def on_progress(event: ProgressEvent) -> None:
        if args.quiet:
            return
        bar = bars.get(event.image_index)
        if bar is None:
            bar = bars[event.image_index] = tqdm(
                total=event.total_steps, desc=f"image {event.image_index + 1}/{event.image_count}",
                unit="step", file=sys.stderr)
        bar.update(1)
        if event.step == event.total_steps:
            bar.close()

    if not args.quiet:
        print(f"seed {task.seed}, {task.size[0]}x{task.size[1]}, {task.sampler}/{task.scheduler}, "
              f"{task.effective_steps} steps, {engine.plan(task).describe()}", file=sys.stderr)
    results = engine.generate(task, on_progress=on_progress,
                              debug_dump=Path(args.debug_dump) if args.debug_dump else None)
    for result in results:
        print(result.path)
    return 0


def _run_metadata(args: argparse.Namespace) -> int:
    from foci.outputs import format_metadata_for_cli

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    print(format_metadata_for_cli(path))
    return 0


def _run_make_checkpoint(args: argparse.Namespace) -> int:
    from foci.models.synthetic import write_checkpoint

    size = "full" if args.full else "tiny"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_checkpoint(out, size=size, kind="refiner" if args.refiner else "base", seed=args.seed)
    print(written)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``foci`` argument parser."""
    parser = argparse.ArgumentParser(prog="foci", description="Offline SDXL image generation, Fooocus-style.")
    parser.add_argument("--version", action="version", version=f"foci {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_generate(sub)
    meta = sub.add_parser("metadata", help="print the generation metadata embedded in an image")
    meta.add_argument("file")
    dev = sub.add_parser("dev", help="developer tools")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    make = dev_sub.add_parser("make-checkpoint",
                              help="write a deterministic random-weight SDXL checkpoint in the original layout")
    size = make.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="small channels, for tests and smoke runs (default)")
    size.add_argument("--full", action="store_true", help="full-size SDXL (about 5 GB in fp16)")
    make.add_argument("--refiner", action="store_true", help="SDXL refiner layout instead of base")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("output", help="output .safetensors path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``foci`` command; errors are printed as one line with a non-zero exit."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"generate": _run_generate, "metadata": _run_metadata, "dev": _run_make_checkpoint}
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("foci: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line for anything the user can act on
        if os.environ.get("FOCI_DEBUG"):
            raise
        print(f"foci: error: {_describe(error)}", file=sys.stderr)
        return 2


def _describe(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return _validation_message(error)
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return message or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
