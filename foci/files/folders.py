"""Where model files live: one or several folders per kind, Fooocus's `path_*` settings (§1.13, §2.24)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType

# kind -> folder under the models root (Fooocus's defaults).
DEFAULT_SUBFOLDERS: Mapping[str, str] = MappingProxyType({
    "checkpoints": "checkpoints",
    "loras": "loras",
    "embeddings": "embeddings",
    "vae": "vae",
    "vae_approx": "vae_approx",
    "upscale_models": "upscale_models",
    "inpaint": "inpaint",
    "controlnet": "controlnet",
    "clip_vision": "clip_vision",
    "prompt_expansion": "prompt_expansion/fooocus_expansion",
    "safety_checker": "safety_checker",
    "sam": "sam",
})
MODEL_KINDS: tuple[str, ...] = tuple(DEFAULT_SUBFOLDERS)

# Fooocus config key -> kind.
SETTING_KEYS: Mapping[str, str] = MappingProxyType({
    "path_checkpoints": "checkpoints",
    "path_loras": "loras",
    "path_embeddings": "embeddings",
    "path_vae": "vae",
    "path_vae_approx": "vae_approx",
    "path_upscale_models": "upscale_models",
    "path_inpaint": "inpaint",
    "path_controlnet": "controlnet",
    "path_clip_vision": "clip_vision",
    "path_fooocus_expansion": "prompt_expansion",
    "path_safety_checker": "safety_checker",
    "path_sam": "sam",
})
# Fooocus `path_*` keys that name no model folder; accepted and ignored.
NON_MODEL_SETTING_KEYS: frozenset[str] = frozenset({"path_outputs", "path_wildcards", "path_safety_checker_models"})

MODEL_SUFFIXES: tuple[str, ...] = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".patch")


class ModelFoldersError(ValueError):
    """An unknown model kind, an unusable folder setting or a file name that escapes its folder."""


@dataclass(frozen=True)
class ModelFolders:
    """The folders searched for each model kind; the first folder of a kind is where downloads go."""

    paths: Mapping[str, tuple[Path, ...]]

    def __post_init__(self) -> None:
        missing = [kind for kind in MODEL_KINDS if not self.paths.get(kind)]
        if missing:
            raise ModelFoldersError(f"model folders: no folder given for {', '.join(missing)}")
        unknown = sorted(set(self.paths) - set(MODEL_KINDS))
        if unknown:
            raise ModelFoldersError(f"model folders: unknown kind {unknown[0]!r}; known: {', '.join(MODEL_KINDS)}")
        object.__setattr__(self, "paths", MappingProxyType({k: tuple(Path(p) for p in self.paths[k])
                                                            for k in MODEL_KINDS}))

    def __hash__(self) -> int:
        return hash(tuple(self.paths.items()))

    @classmethod
    def default(cls, root: str | Path) -> ModelFolders:
        """Fooocus's layout under `root` (the `models` folder): `root/checkpoints`, `root/loras`, …"""
        root = Path(root)
        return cls({kind: (root / sub,) for kind, sub in DEFAULT_SUBFOLDERS.items()})

    @classmethod
    def from_settings(cls, paths: Mapping[str, object], root: str | Path) -> ModelFolders:
        """Folders from Fooocus-style settings (`path_checkpoints`: a folder or a list of folders, …).

        Keys not starting with `path_` are ignored (a whole `config.txt` dict may be passed), as are Fooocus's
        non-model `path_outputs`/`path_wildcards`; kinds without a key keep the default under `root`. Relative
        folders are taken relative to `root`.
        """
        root = Path(root)
        folders = dict(cls.default(root).paths)
        for key, value in paths.items():
            if not key.startswith("path_") or key in NON_MODEL_SETTING_KEYS:
                continue
            kind = SETTING_KEYS.get(key)
            if kind is None:
                raise ModelFoldersError(f"model folders: unknown setting {key!r}; known: {', '.join(SETTING_KEYS)}")
            folders[kind] = tuple(root / Path(item) for item in _as_folder_list(key, value))
        return cls(folders)

    def folders(self, kind: str) -> list[Path]:
        """Every folder searched for `kind`, in priority order."""
        return list(self._kind_paths(kind))

    def download_folder(self, kind: str) -> Path:
        """The folder new files of `kind` are downloaded into (the first one)."""
        return self._kind_paths(kind)[0]

    def list_files(self, kind: str, suffixes: Iterable[str] = MODEL_SUFFIXES) -> list[Path]:
        """Model files of `kind` in every folder, recursively, as paths relative to their folder.

        Sorted case-insensitively; a name found in several folders is listed once (the first folder wins, as
        in `find`). Hidden files and folders, `.part` downloads and `.corrupted` files are skipped.
        """
        wanted = tuple(s.lower() for s in suffixes)
        seen: dict[str, Path] = {}
        for folder in self._kind_paths(kind):
            if not folder.is_dir():
                continue
            for path in folder.rglob("*"):
                relative = path.relative_to(folder)
                if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                    continue
                if path.name.lower().endswith(wanted):
                    seen.setdefault(relative.as_posix(), relative)
        return [seen[key] for key in sorted(seen, key=lambda name: (name.casefold(), name))]

    def find(self, kind: str, name: str | Path) -> Path | None:
        """The first existing file called `name` (may contain subfolders) in the folders of `kind`, else None."""
        relative = check_model_name(kind, name)
        for folder in self._kind_paths(kind):
            candidate = folder / relative
            if candidate.is_file():
                return candidate
        return None

    def _kind_paths(self, kind: str) -> tuple[Path, ...]:
        try:
            return self.paths[kind]
        except KeyError:
            raise ModelFoldersError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}") from None


def _as_folder_list(key: str, value: object) -> list[str]:
    if isinstance(value, (str, Path)):
        items = [value]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, Path)) for v in value):
        items = list(value)
    else:
        raise ModelFoldersError(f"model folders: setting {key!r} must be a folder or a non-empty list of folders, "
                                f"got {value!r}")
    if any(not str(item).strip() for item in items):
        raise ModelFoldersError(f"model folders: setting {key!r} contains an empty folder name")
    return [str(item) for item in items]


def check_model_name(kind: str, name: str | Path) -> Path:
    """The one rule for a model name that comes over the API or the UI: a file (optionally in subfolders) inside
    the folders of ``kind``, returned as a relative path. Absolute and drive paths, ``..`` parts, a leading ``~``
    and NUL characters are refused with :class:`ModelFoldersError`. Symlinks inside a model folder were put there
    by the operator and are followed."""
    text = str(name)
    if not text or "\0" in text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() \
            or PureWindowsPath(text).drive or text.startswith("~"):
        raise ModelFoldersError(f"model name {text!r} for {kind} must be a file name inside its model folder "
                                "(no absolute path, drive or '~')")
    relative = Path(*PureWindowsPath(text).parts) if "\\" in text else Path(text)
    if ".." in relative.parts:
        raise ModelFoldersError(f"model name {text!r} for {kind} must not leave its folder ('..')")
    return relative

