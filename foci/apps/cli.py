"""Command line: ``foci generate``, ``foci prompt``, ``foci styles``, ``foci models``, ``foci metadata``,
``foci dev make-checkpoint``. Settings come from config/preset (``foci.settings.config``); flags override them."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from foci import __version__
from foci.task import SAMPLERS, SCHEDULERS, GenerationTask, LoraSpec


class CliError(Exception):
    """An error shown to the user as one line."""


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "__root__")
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ options
def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help="preset name (default, anime, realistic, lcm, lightning, "
                        "playground_v2.5, pony_v6, sai) or a preset .json file")
    parser.add_argument("--config", default=None, help="config file (default: $FOCI_CONFIG or ./config.json)")
    parser.add_argument("--models-dir", default=os.environ.get("FOCI_MODELS_DIR"),
                        help="models root with checkpoints/, loras/, … (default: the config's path_* keys)")


def _add_download_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", default=bool(os.environ.get("FOCI_OFFLINE")),
                        help="never download; say which files are missing and where to put them")
    parser.add_argument("--hf-mirror", default=None, help="base URL replacing https://huggingface.co in downloads")
    parser.add_argument("--mirror", action="append", default=[], metavar="ORIGIN=URL",
                        help="mirror for another download origin, e.g. https://raw.githubusercontent.com=URL "
                             "(repeatable; also $FOCI_MIRRORS)")


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt; several lines become separate items")
    parser.add_argument("--negative", default=None, help="negative prompt")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first image (random if omitted)")
    parser.add_argument("--image-number", type=int, default=None)
    parser.add_argument("--styles", default=None,
                        help="comma-separated style names (\"\" for none); default from the preset")
    expansion = parser.add_mutually_exclusive_group()
    expansion.add_argument("--expansion", dest="expansion", action="store_true", default=None,
                           help="add the Fooocus V2 prompt expansion")
    expansion.add_argument("--no-expansion", dest="expansion", action="store_false",
                           help="remove the Fooocus V2 prompt expansion")
    parser.add_argument("--performance", default=None,
                        help="Quality, Speed, Extreme Speed, Lightning or Hyper-SD")
    parser.add_argument("--read-wildcards-in-order", action="store_true", default=None)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate images from a prompt (no server needed)")
    _add_prompt_options(gen)
    _add_settings_options(gen)
    _add_download_options(gen)
    gen.add_argument("--aspect", default=None, help="WIDTH*HEIGHT, e.g. 1152*896")
    gen.add_argument("--steps", type=int, default=None)
    gen.add_argument("--cfg", type=float, default=None, help="guidance scale")
    gen.add_argument("--sharpness", type=float, default=None)
    gen.add_argument("--sampler", default=None, help=f"one of: {', '.join(SAMPLERS)}")
    gen.add_argument("--scheduler", default=None, help=f"one of: {', '.join(SCHEDULERS)}")
    gen.add_argument("--clip-skip", type=int, default=None)
    gen.add_argument("--adaptive-cfg", type=float, default=None, help="CFG mimicking scale")
    gen.add_argument("--model", default=None, help="base SDXL checkpoint: a path or a name in the checkpoints folder")
    gen.add_argument("--refiner", default=None, help="refiner checkpoint (path or name; None for none)")
    gen.add_argument("--refiner-switch", type=float, default=None)
    gen.add_argument("--refiner-swap-method", choices=("joint", "separate"), default=None)
    gen.add_argument("--vae", default=None, help="VAE file overriding the checkpoint's VAE")
    gen.add_argument("--lora", action="append", default=None, metavar="NAME:WEIGHT",
                     help="a LoRA (repeatable); replaces the preset's LoRA slots; 'none' for no LoRA")
    gen.add_argument("--freeu", action="store_true", default=None,
                     help="enable FreeU (b1 1.01, b2 1.02, s1 0.99, s2 0.95)")
    gen.add_argument("--sag", type=float, default=None, help="Self-Attention Guidance scale (0 = off)")
    gen.add_argument("--perp-neg", type=float, default=None, help="Perp-Neg scale (0 = off)")
    gen.add_argument("--format", choices=("png", "jpeg", "webp"), default=None)
    gen.add_argument("--metadata-scheme", choices=("fooocus", "a1111"), default=None)
    gen.add_argument("--no-metadata", action="store_true", help="do not embed metadata in images")
    gen.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                     help="fp32 reproduces Fooocus exactly; auto picks bf16/fp16 where fast")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    gen.add_argument("--vram", choices=("auto", "high", "normal", "low"), default=os.environ.get("FOCI_VRAM", "auto"),
                     help="GPU memory policy: high keeps models on the GPU, normal offloads unused ones to RAM, "
                          "low streams weights layer by layer (auto: by GPU size)")
    gen.add_argument("--output-dir", default=os.environ.get("FOCI_OUTPUT_DIR"))
    gen.add_argument("--debug-dump", default=None, metavar="DIR",
                     help="write noise, sigmas, conds, final latent, prompts and settings to DIR")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_lora(text: str) -> LoraSpec:
    name, _, weight = text.rpartition(":")
    if not name:
        return LoraSpec(name=text, weight=1.0)
    try:
        return LoraSpec(name=name, weight=float(weight))
    except ValueError:
        raise CliError(f"--lora {text!r}: expected NAME:WEIGHT, e.g. my_lora.safetensors:0.8") from None


# ------------------------------------------------------------------------------------------------ settings
def _load_settings(args: argparse.Namespace):
    from foci.settings.config import load_settings
    from foci.text.styles import StyleLibrary

    root = Path.cwd()
    library = StyleLibrary.load([root / "styles"])
    settings, messages = load_settings(preset=args.preset, config_path=Path(args.config) if args.config else None,
                                       root=root, known_styles=library.names())
    for message in messages:
        print(f"foci: warning: {message}", file=sys.stderr)
    return settings, root


def _engine(args: argparse.Namespace, settings, root: Path):
    from foci.engine.engine import Engine
    from foci.files.downloads import Downloader, load_catalogue, parse_mirrors, tqdm_progress

    catalogue_file = os.environ.get("FOCI_CATALOGUE")
    downloader = Downloader(mirror=getattr(args, "hf_mirror", None), offline=getattr(args, "offline", False),
                            mirrors=parse_mirrors(" ".join(getattr(args, "mirror", []))),
                            progress=tqdm_progress(file=sys.stderr, disable=getattr(args, "quiet", False)))
    engine = Engine.from_settings(settings, root=root, device=getattr(args, "device", "auto"),
                                  precision=getattr(args, "precision", "auto"), downloader=downloader,
                                  models_dir=Path(args.models_dir) if args.models_dir else None)
    engine.catalogue = load_catalogue(Path(catalogue_file)) if catalogue_file else None
    if getattr(args, "output_dir", None):
        engine.output_dir = Path(args.output_dir)
    engine.vram = getattr(args, "vram", "auto")
    return engine


def _task_from_args(args: argparse.Namespace, settings) -> GenerationTask:
    """Preset/config defaults, then every flag the user actually typed."""
    from foci.text.styles import FOOOCUS_V2

    values: dict[str, Any] = settings.task_defaults()
    given = {
        "prompt": args.prompt, "negative_prompt": args.negative, "seed": args.seed,
        "image_number": args.image_number, "performance": args.performance,
        "read_wildcards_in_order": args.read_wildcards_in_order,
    }
    if hasattr(args, "aspect"):
        given |= {
            "aspect_ratio": args.aspect, "steps": args.steps, "guidance_scale": args.cfg,
            "sharpness": args.sharpness, "sampler": args.sampler, "scheduler": args.scheduler,
            "clip_skip": args.clip_skip, "adaptive_cfg": args.adaptive_cfg, "base_model": args.model,
            "refiner_model": None if args.refiner == "None" else args.refiner, "refiner_switch": args.refiner_switch,
            "refiner_swap_method": args.refiner_swap_method, "vae": args.vae, "sag_scale": args.sag,
            "perp_neg_scale": args.perp_neg, "output_format": args.format, "metadata_scheme": args.metadata_scheme,
            "precision": args.precision,
        }
        if args.refiner == "None":
            values["refiner_model"] = None
        if args.freeu:
            given["freeu"] = {"enabled": True}
        if args.no_metadata:
            given["save_metadata"] = False
        if args.lora is not None:
            given["loras"] = [_parse_lora(text) for text in args.lora if text.lower() != "none"]
    values |= {key: value for key, value in given.items() if value is not None}
    if args.styles is not None:
        values["styles"] = [name.strip() for name in args.styles.split(",") if name.strip()]
    if args.expansion is True and FOOOCUS_V2 not in values["styles"]:
        values["styles"] = [FOOOCUS_V2, *values["styles"]]
    elif args.expansion is False:
        values["styles"] = [name for name in values["styles"] if name != FOOOCUS_V2]
    if values.get("seed") is None:
        values["seed"] = int.from_bytes(os.urandom(8), "little") % (2**63)
    try:
        return GenerationTask(**values)
    except ValidationError as error:
        raise CliError(_validation_message(error)) from None
    except ValueError as error:
        raise CliError(str(error)) from None


# ------------------------------------------------------------------------------------------------ commands
def _run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from foci.engine.engine import ProgressEvent

    settings, root = _load_settings(args)
    task = _task_from_args(args, settings)
    engine = _engine(args, settings, root)
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
              f"{task.performance}, styles: {', '.join(task.styles) or 'none'}, {engine.plan(task).describe()}",
              file=sys.stderr)
    results = engine.generate(task, on_progress=on_progress,
                              debug_dump=Path(args.debug_dump) if args.debug_dump else None)
    for result in results:
        print(result.path)
    return 0


def _run_prompt(args: argparse.Namespace) -> int:
    import json

    settings, root = _load_settings(args)
    task = _task_from_args(args, settings)
    engine = _engine(args, settings, root)
    for prompts in engine.plan_prompts(task):
        print(json.dumps({"seed": prompts.seed, "positive": prompts.positive, "negative": prompts.negative,
                          "positive_top_k": prompts.positive_top_k, "negative_top_k": prompts.negative_top_k,
                          "expansion": prompts.expansion, "styles": prompts.styles}, ensure_ascii=False, indent=2))
    return 0


def _run_styles(args: argparse.Namespace) -> int:
    from foci.text.styles import StyleLibrary

    library = StyleLibrary.load([Path.cwd() / "styles"])
    for message in library.warnings:
        print(f"foci: warning: {message}", file=sys.stderr)
    if args.styles_command == "list":
        for name in library.names():
            print(name)
        return 0
    style = library.get(args.name)
    print(f"name: {style.name}\nprompt: {style.prompt}\nnegative_prompt: {style.negative_prompt}")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from foci.files.downloads import required_files
    from foci.files.folders import MODEL_KINDS
    from foci.files.hash_cache import HashCache, verify_files

    settings, root = _load_settings(args)
    engine = _engine(args, settings, root)
    folders = engine.folders
    if args.models_command == "list":
        for kind in MODEL_KINDS:
            for relative in folders.list_files(kind):
                print(f"{kind}\t{relative.as_posix()}")
        return 0
    if args.models_command == "download":
        names = list(args.names)
        if args.preset_files:
            names += required_files(args.preset_files, catalogue=engine.catalogue)
        if not names:
            raise CliError("name the files to download, or pass --for-preset NAME")
        for path in engine.downloader.ensure(names, folders, engine.catalogue):
            print(path)
        return 0
    cache = HashCache(engine.hash_cache.cache_file)
    bad = 0
    for path, status in verify_files(folders, engine.catalogue, cache):
        print(f"{status}\t{path}")
        bad += status.startswith("corrupt")
    return 1 if bad else 0


def _run_serve(args: argparse.Namespace) -> int:
    from foci.apps.serve import DEFAULT_PORT, ScaleOptions, build_service, serve
    from foci.files.downloads import DownloadError, required_files

    settings, root = _load_settings(args)
    engine = _engine(args, settings, root)
    preset = Path(args.preset).stem if args.preset else "default"
    if not args.no_download:
        try:  # like Fooocus's launcher: fetch what the preset needs before the first Generate
            needed = required_files(preset, catalogue=engine.catalogue)
            engine.downloader.ensure(needed, engine.folders, engine.catalogue)
        except DownloadError as error:
            print(f"foci: warning: {_download_warning(error, engine, needed)}", file=sys.stderr)
        except ValueError as error:
            print(f"foci: warning: {error}", file=sys.stderr)
    host = args.listen
    engines = [engine]
    for device in _device_list(args.devices)[1:]:  # one engine (and worker) per further device
        engines.append(_engine(args, settings, root))
        engines[-1].device = device
    if args.devices:
        engine.device = _device_list(args.devices)[0]
    service = build_service(settings=settings, engines=engines, root=root, listen_host=host,
                            auth_file=Path(args.auth_file) if args.auth_file else None, preset=preset,
                            scale=ScaleOptions(args.queue, args.ray, args.ray_cpu_workers))
    serve(service, host=host, port=args.port or DEFAULT_PORT, open_browser=not args.no_browser)
    return 0


def _download_warning(error: Exception, engine, names: list[str]) -> str:
    """The start-up line for a failed download: advice when there is no connection at all."""
    from foci.files.download_hints import download_failure_message
    from foci.files.downloads import load_catalogue

    catalogue = engine.catalogue if engine.catalogue is not None else load_catalogue()
    failed = next((catalogue[name] for name in names if name in catalogue and catalogue[name].name in str(error)),
                  None)
    if failed is None:
        return str(error)
    return download_failure_message(error, url=engine.downloader.resolve_url(failed.url),
                                    file_name=failed.file_name, folder=engine.folders.download_folder(failed.folder))


def _device_list(devices: str | None) -> list[str]:
    """``--devices cuda:0,cuda:1`` or ``all`` (every CUDA device) → device names; None → []."""
    if not devices:
        return []
    if devices == "all":
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise CliError("--devices all: torch sees no CUDA device")
        return [f"cuda:{index}" for index in range(count)]
    return [name.strip() for name in devices.split(",") if name.strip()]


def _run_metadata(args: argparse.Namespace) -> int:
    from foci.records.outputs import format_metadata_for_cli

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    print(format_metadata_for_cli(path))
    return 0


def _run_make_checkpoint(args: argparse.Namespace) -> int:
    from foci.dev.synthetic import write_checkpoint

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
    prompt = sub.add_parser("prompt", help="print the prompt items each image would encode (no diffusion)")
    _add_prompt_options(prompt)
    _add_settings_options(prompt)
    _add_download_options(prompt)
    styles = sub.add_parser("styles", help="list styles or show one")
    styles_sub = styles.add_subparsers(dest="styles_command", required=True)
    styles_sub.add_parser("list", help="all style names")
    show = styles_sub.add_parser("show", help="one style's templates")
    show.add_argument("name")
    models = sub.add_parser("models", help="list, download or verify model files")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, text in (("list", "model files found, by kind"), ("download", "download catalogue files"),
                       ("verify", "re-hash files and report corrupt ones")):
        command = models_sub.add_parser(name, help=text)
        _add_settings_options(command)
        _add_download_options(command)
        if name == "download":
            command.add_argument("names", nargs="*", help="catalogue names (see foci/catalogue.json)")
            command.add_argument("--for-preset", dest="preset_files", default=None,
                                 help="everything a preset needs for text-to-image")
    server = sub.add_parser("serve", help="run the web UI and REST API (the default without a command)")
    _add_settings_options(server)
    _add_download_options(server)
    server.add_argument("--listen", nargs="?", const="0.0.0.0", default="127.0.0.1",
                        help="address to listen on (bare flag: 0.0.0.0; needs credentials in auth.json)")
    server.add_argument("--port", type=int, default=None, help="port (default 7865)")
    server.add_argument("--output-dir", default=os.environ.get("FOCI_OUTPUT_DIR"))
    server.add_argument("--auth-file", default=None, help="credentials file (default ./auth.json if present)")
    server.add_argument("--no-browser", action="store_true", help="do not open a browser")
    server.add_argument("--no-download", action="store_true", help="do not fetch the preset's models at start")
    server.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    server.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    server.add_argument("--devices", default=None,
                        help="several devices, one worker each, sharing the queue: cuda:0,cuda:1 or all")
    server.add_argument("--vram", choices=("auto", "high", "normal", "low"),
                        default=os.environ.get("FOCI_VRAM", "auto"))
    server.add_argument("--queue", default=os.environ.get("FOCI_QUEUE"),
                        help="job queue: postgresql://USER@HOST/DB or a SQLite file (default ./jobs.sqlite3)")
    server.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run the workers on a Ray cluster (auto or HOST:PORT): one per GPU")
    server.add_argument("--ray-cpu-workers", type=int, default=None, metavar="N",
                        help="with --ray on a cluster without GPUs: N CPU workers (default one per CPU)")
    meta = sub.add_parser("metadata", help="print the generation metadata embedded in an image")
    meta.add_argument("file")
    dev = sub.add_parser("dev", help="developer tools")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    make = dev_sub.add_parser("make-checkpoint",
                              help="write a deterministic random-weight SDXL checkpoint in the original layout")
    size = make.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="small channels, for tests and smoke runs (default)")
    size.add_argument("--full", action="store_true", help="full-size SDXL (about 7 GB in fp16)")
    make.add_argument("--refiner", action="store_true", help="SDXL refiner layout instead of base")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("output", help="output .safetensors path")
    return parser


_USER_ERRORS = (CliError, ValueError, OSError, RuntimeError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``foci`` command; errors are printed as one line with a non-zero exit."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let hub libraries reach out: Foci downloads itself
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # torchsde rounds the Brownian tree's ends to 6 digits and then warns on every query near them (Fooocus too).
    warnings.filterwarnings("ignore", message="Should have t", module="torchsde")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]  # `foci [--preset anime] [--listen]` starts the web UI, as Fooocus does
    args = parser.parse_args(argv)
    commands = {"generate": _run_generate, "prompt": _run_prompt, "styles": _run_styles, "models": _run_models,
                "serve": _run_serve, "metadata": _run_metadata, "dev": _run_make_checkpoint}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("foci: interrupted", file=sys.stderr)
        return 130
    except ValidationError as error:
        print(f"foci: error: {_validation_message(error)}", file=sys.stderr)
        return 2
    except _USER_ERRORS as error:
        if os.environ.get("FOCI_DEBUG"):
            raise
        text = str(error).strip()
        # the offline report lists every missing file with its URL and folder: keep all of it
        message = text if text.startswith("offline:") else _first_line(error)
        print(f"foci: error: {message}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: still one line, with a way to see the traceback
        if os.environ.get("FOCI_DEBUG"):
            raise
        print(f"foci: internal error: {type(error).__name__}: {_first_line(error)} "
              "(set FOCI_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "") or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
