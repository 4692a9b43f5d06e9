"""Command line, the maintenance commands: ``foci styles``, ``foci models``, ``foci metadata``, ``foci dev``.
(``foci generate``, ``foci prompt`` and ``foci serve`` and the parser live in :mod:`foci.apps.cli`.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foci.apps.cli import CliError, _engine, _load_settings


def _run_styles(args: argparse.Namespace) -> int:
    from foci.text.styles import StyleLibrary

    if args.styles_command == "import":
        return _import_styles(Path(args.folder), Path(args.to), overwrite=args.overwrite)
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


def _import_styles(source: Path, target: Path, *, overwrite: bool) -> int:
    """``foci styles import DIR``: a Fooocus install's style files (the user's own copy) into the user styles
    folder, validated, with counts."""
    from foci.text.styles import StyleError, StyleLibrary, import_style_files

    try:
        result = import_style_files(source, target, overwrite=overwrite)
    except StyleError as error:
        raise CliError(str(error)) from None
    for name, count in result.copied.items():
        print(f"imported {name} ({count} styles)")
    for name in result.unchanged:
        print(f"unchanged {name} (already there)")
    for name in result.kept:
        print(f"foci: warning: {target / name} exists and differs: kept (--overwrite replaces it)", file=sys.stderr)
    for name, why in result.refused.items():
        print(f"foci: warning: skipped {name}: {why}", file=sys.stderr)
    shipped = set(StyleLibrary.load().template_names())
    names = list(dict.fromkeys(result.style_names))
    overriding = sum(name in shipped for name in names)
    print(f"{len(result.copied)} file(s) imported into {target}: {len(names)} styles, {len(names) - overriding} new, "
          f"{overriding} replacing Foci's own of the same name; {len(result.refused)} file(s) skipped as invalid, "
          f"{len(result.kept)} kept")
    return 1 if result.refused or result.kept else 0


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
    if args.models_command == "pin":
        return _pin_model(engine, args.name, args.sha256)
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
    results = verify_files(folders, engine.catalogue, cache, known=settings.model_sha256)
    for path, status in results:
        print(f"{status}\t{path}")
    others = sum(len(folders.list_files(kind)) for kind in MODEL_KINDS) - len(results)
    print(_verify_summary([status for _, status in results], others), file=sys.stderr)
    return 1 if any(status.startswith("corrupt") for _, status in results) else 0


def _verify_summary(statuses: list[str], others: int) -> str:
    """The closing line of ``foci models verify``, also (above all) when every file is fine."""
    unchecked = f"; {others} other file(s) are not in the catalogue and were not checked" if others > 0 else ""
    if not statuses:
        return f"no catalogue model file in the model folders{unchecked}"
    corrupt = sum(status.startswith("corrupt") for status in statuses)
    unknown = statuses.count("unknown hash")
    if corrupt:
        return f"{corrupt} of {len(statuses)} catalogue file(s) corrupt: replace them or delete them to download " \
               f"again{unchecked}"
    if unknown:
        return f"no corrupt file among {len(statuses)} catalogue file(s): {len(statuses) - unknown} ok, {unknown} " \
               f"without a reference hash (`foci models pin NAME` pins the present one){unchecked}"
    return f"all {len(statuses)} catalogue file(s) ok{unchecked}"


def _pin_model(engine, name: str, sha256: str | None) -> int:
    """``foci models pin NAME [SHA256]``: the SHA-256 a catalogue file must have from now on (default: the hash
    of the file present now)."""
    import re

    from foci.files.downloads import load_catalogue
    from foci.files.hash_cache import PINNED

    catalogue = engine.catalogue if engine.catalogue is not None else load_catalogue()
    if name not in catalogue:
        raise CliError(f"unknown model file {name!r}: not in the catalogue")
    entry = catalogue[name]
    if sha256 is None:
        path = engine.folders.find(entry.folder, entry.file_name)
        if path is None:
            raise CliError(f"{name} is in no {entry.folder} folder; give the SHA-256 to pin: "
                           f"foci models pin {name} SHA256")
        sha256 = engine.hash_cache.sha256(path)
    sha256 = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise CliError(f"{sha256!r} is not a SHA-256 (64 hex digits)")
    known, source = engine.downloader.expected_sha256(entry) if engine.downloader else (None, "")
    if known is not None and known != sha256 and source not in ("first download", PINNED):
        print(f"foci: warning: the {source} names sha256 {known} for {name}, which takes precedence over a pin",
              file=sys.stderr)
    engine.hash_cache.pin(name, sha256, PINNED)
    print(f"pinned {name} sha256 {sha256}")
    return 0


def _run_metadata(args: argparse.Namespace) -> int:
    from foci.records.outputs import format_metadata_for_cli

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    print(format_metadata_for_cli(path))
    return 0


def _run_dev(args: argparse.Namespace) -> int:
    if args.dev_command == "make-models":
        from foci.dev.make_models import write_tiny_models

        if not args.tiny:
            raise CliError("make-models writes tiny models only: add --tiny")
        for path in write_tiny_models(Path(args.folder), seed=args.seed).values():
            print(path)
        return 0
    return _run_make_checkpoint(args)


def _run_make_checkpoint(args: argparse.Namespace) -> int:
    from foci.dev.synthetic import write_checkpoint

    size = "full" if args.full else "tiny"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_checkpoint(out, size=size, kind="refiner" if args.refiner else "base", seed=args.seed)
    print(written)
    return 0
