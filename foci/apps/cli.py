"""Command line: ``foci generate``, ``foci prompt``, ``foci serve`` and the parser of every command (the
maintenance commands ``foci styles``, ``foci models``, ``foci metadata``, ``foci dev`` are in
:mod:`foci.apps.cli_tools`). Settings come from config/preset (``foci.settings.config``); flags override them."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from foci import __version__
from foci.fields import FieldFacts, task_fields
from foci.messages import validation_message
from foci.task import OUTPAINT_DIRECTIONS, GenerationTask, LoraSpec, random_seed


class CliError(Exception):
    """An error shown to the user as one line."""


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


def _add_prompt_options(parser: argparse.ArgumentParser, model: type[GenerationTask] = GenerationTask) -> None:
    _add_task_options(parser, model, prompt_command=True)
    expansion = parser.add_mutually_exclusive_group()
    expansion.add_argument("--expansion", dest="expansion", action="store_true", default=None,
                           help="add the Fooocus V2 prompt expansion")
    expansion.add_argument("--no-expansion", dest="expansion", action="store_false",
                           help="remove the Fooocus V2 prompt expansion")


def _add_task_options(parser: argparse.ArgumentParser, model: type[GenerationTask], *, prompt_command: bool) -> None:
    """One option per task field with a CLI entry in the field table (those of ``foci prompt``, or the others)."""
    for facts in task_fields(model):
        cli = facts.cli
        if cli is None or cli.prompt_command != prompt_command:
            continue
        if not cli.flag.startswith("-"):
            parser.add_argument(cli.flag, help=cli.help)
            continue
        options: dict[str, Any] = {"dest": facts.name, "default": None, "help": _help(facts)}
        if cli.action == "flag":
            options |= {"action": "store_const", "const": cli.flag_value}
        else:
            if cli.action == "append":
                options["action"] = "append"
            if facts.type in (int, float) and cli.convert is None:
                options["type"] = facts.type
            if facts.literal:
                options["choices"] = facts.choices
            else:
                options["metavar"] = cli.metavar or cli.flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(cli.flag, **options)


def _help(facts: FieldFacts) -> str | None:
    """The option's help: the table's text, the allowed names of a validator-checked field, a number's range."""
    parts = [facts.cli.help] if facts.cli is not None and facts.cli.help else []
    if facts.choices is not None and not facts.literal:
        parts.append(f"one of: {', '.join(map(str, facts.choices))}")
    if facts.is_number and facts.ge is not None and facts.le is not None and facts.le < 2**31:
        parts.append(f"({facts.ge:g} to {facts.le:g})")
    return " ".join(parts) or None


def _add_generate(sub: argparse._SubParsersAction, model: type[GenerationTask]) -> None:
    gen = sub.add_parser("generate", help="generate images from a prompt (no server needed)")
    _add_prompt_options(gen, model)
    _add_settings_options(gen)
    _add_download_options(gen)
    _add_task_options(gen, model, prompt_command=False)
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
                            progress=tqdm_progress(file=sys.stderr, disable=getattr(args, "quiet", False)),
                            known_sha256=settings.model_sha256)
    engine = Engine.from_settings(settings, root=root, device=getattr(args, "device", "auto"),
                                  precision=getattr(args, "precision", None) or "auto", downloader=downloader,
                                  models_dir=Path(args.models_dir) if args.models_dir else None)
    downloader.hash_cache = engine.hash_cache  # pins (trust on first use) live next to the cached hashes
    engine.catalogue = load_catalogue(Path(catalogue_file)) if catalogue_file else None
    if getattr(args, "output_dir", None):
        engine.output_dir = Path(args.output_dir)
    engine.vram = getattr(args, "vram", "auto")
    return engine


def _comma_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _none_name(text: str) -> str | None:
    return None if text == "None" else text


def _loras(texts: list[str]) -> list[LoraSpec]:
    return [_parse_lora(text) for text in texts if text.lower() != "none"]


def _image_file_hash(path: str) -> str:
    """An image file named on the command line → its content hash (the file is stored by ``_store_inputs``)."""
    from foci.files.input_images import check_image_bytes, image_digest
    from foci.records.image_input import ImageInputError

    try:
        data = Path(path).expanduser().read_bytes()
        check_image_bytes(data, what=path)
    except OSError as error:
        raise CliError(f"{path}: {error.strerror or error}") from None
    except ImageInputError as error:
        raise CliError(str(error)) from None
    return image_digest(data)


def _outpaint(text: str) -> list[str]:
    directions = {name.lower(): name for name in OUTPAINT_DIRECTIONS}
    chosen = [name.lower() for name in _comma_list(text)]
    unknown = [name for name in chosen if name not in directions]
    if unknown:
        raise CliError(f"--outpaint: unknown direction {unknown[0]!r}; use left, right, top, bottom")
    return [directions[name] for name in chosen]


# Converters the field table names (``Cli.convert``): option text → field value.
CLI_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "comma_list": _comma_list, "none_name": _none_name, "loras": _loras, "input_image": _image_file_hash,
    "outpaint": _outpaint,
}


def _task_from_args(args: argparse.Namespace, settings, model: type[GenerationTask] = GenerationTask) -> GenerationTask:
    """Preset/config defaults, then every flag the user actually typed."""
    from foci.text.styles import FOOOCUS_V2

    values: dict[str, Any] = settings.task_defaults(model)
    for facts in task_fields(model):
        given = getattr(args, facts.name, None) if facts.cli is not None else None
        if given is not None:
            values[facts.name] = CLI_CONVERTERS[facts.cli.convert](given) if facts.cli.convert else given
    if args.expansion is True and FOOOCUS_V2 not in values["styles"]:
        values["styles"] = [FOOOCUS_V2, *values["styles"]]
    elif args.expansion is False:
        values["styles"] = [name for name in values["styles"] if name != FOOOCUS_V2]
    if values.get("seed") is None:
        values["seed"] = random_seed()
    try:
        return model(**values)
    except ValidationError as error:
        raise CliError(validation_message(error)) from None
    except ValueError as error:
        raise CliError(str(error)) from None


# ------------------------------------------------------------------------------------------------ commands
def _store_inputs(args: argparse.Namespace, engine) -> None:
    """Put the image files named by --input-image / --inpaint-mask into the engine's input store (the task names
    them by content hash)."""
    from foci.records.image_input import ImageInputError

    for name in ("input_image", "inpaint_mask"):
        path = getattr(args, name, None)
        if path:
            try:
                engine.inputs.put_file(Path(path).expanduser(), what=path)
            except ImageInputError as error:
                raise CliError(str(error)) from None


def _run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from foci.engine.engine import ProgressEvent

    settings, root = _load_settings(args)
    task = _task_from_args(args, settings)
    engine = _engine(args, settings, root)
    _store_inputs(args, engine)
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
    for prompts in engine.plan_prompts(engine.without_unavailable_expansion(task)):
        print(json.dumps({"seed": prompts.seed, "positive": prompts.positive, "negative": prompts.negative,
                          "positive_top_k": prompts.positive_top_k, "negative_top_k": prompts.negative_top_k,
                          "expansion": prompts.expansion, "styles": prompts.styles}, ensure_ascii=False, indent=2))
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from foci.apps.serve import DEFAULT_PORT, ScaleOptions, build_service, predownload, serve, startup_files

    settings, root = _load_settings(args)
    engine = _engine(args, settings, root)
    preset = Path(args.preset).stem if args.preset else "default"
    if not args.no_download:
        try:  # like Fooocus's launcher: fetch every missing file the preset and config need before serving
            report = predownload(engine, startup_files(settings, preset, engine.catalogue))
        except ValueError as error:
            report = str(error)
        if report is not None:
            print(f"foci: warning: {report}", file=sys.stderr)
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


def build_parser(model: type[GenerationTask] = GenerationTask) -> argparse.ArgumentParser:
    """The ``foci`` argument parser; the task options come from ``model``'s field table."""
    parser = argparse.ArgumentParser(prog="foci", description="Offline SDXL image generation, Fooocus-style.")
    parser.add_argument("--version", action="version", version=f"foci {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_generate(sub, model)
    prompt = sub.add_parser("prompt", help="print the prompt items each image would encode (no diffusion)")
    _add_prompt_options(prompt, model)
    _add_settings_options(prompt)
    _add_download_options(prompt)
    styles = sub.add_parser("styles", help="list, show or import styles")
    styles_sub = styles.add_subparsers(dest="styles_command", required=True)
    styles_sub.add_parser("list", help="all style names")
    show = styles_sub.add_parser("show", help="one style's templates")
    show.add_argument("name")
    importer = styles_sub.add_parser("import", help="copy a Fooocus install's sdxl_styles/*.json (your own copy) "
                                     "into the user styles folder")
    importer.add_argument("folder", help="the Fooocus folder, or its sdxl_styles folder")
    importer.add_argument("--to", default="styles", help="user styles folder (default ./styles)")
    importer.add_argument("--overwrite", action="store_true", help="replace differing files of the same name")
    models = sub.add_parser("models", help="list, download or verify model files")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, text in (("list", "model files found, by kind"), ("download", "download catalogue files"),
                       ("verify", "re-hash files and report corrupt ones"),
                       ("pin", "fix the SHA-256 a catalogue file must have (default: the file's present hash)")):
        command = models_sub.add_parser(name, help=text)
        _add_settings_options(command)
        _add_download_options(command)
        if name == "download":
            command.add_argument("names", nargs="*", help="catalogue names (see foci/catalogue.json)")
            command.add_argument("--for-preset", dest="preset_files", default=None,
                                 help="everything a preset needs for text-to-image")
        if name == "pin":
            command.add_argument("name", help="catalogue name (see foci/catalogue.json)")
            command.add_argument("sha256", nargs="?", default=None, help="64 hex digits (default: hash the file)")
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
    models_dir = dev_sub.add_parser("make-models", help="write a complete tiny models folder (checkpoint, inpaint "
                                    "head and engines, upscaler) in the real file layouts, for offline use and tests")
    models_dir.add_argument("--tiny", action="store_true", required=True, help="tiny models (the only size)")
    models_dir.add_argument("--seed", type=int, default=0)
    models_dir.add_argument("folder", help="models folder to fill (checkpoints/, inpaint/, upscale_models/)")
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
    from foci.apps.cli_tools import _run_dev, _run_metadata, _run_models, _run_styles

    commands = {"generate": _run_generate, "prompt": _run_prompt, "styles": _run_styles, "models": _run_models,
                "serve": _run_serve, "metadata": _run_metadata, "dev": _run_dev}
    try:
        return commands[args.command](args)
    except BrokenPipeError:  # `foci styles list | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("foci: interrupted", file=sys.stderr)
        return 130
    except ValidationError as error:
        print(f"foci: error: {validation_message(error)}", file=sys.stderr)
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
