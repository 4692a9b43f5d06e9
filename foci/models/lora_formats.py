"""LoRA file formats: reading files, grouping their tensors into per-module patches, and the weight-delta math.

Supported (§2.11): kohya/A1111 LoRA and LoCon (``lora_up``/``lora_down``/``lora_mid``/``alpha``), diffusers
(``_lora.up``, ``.lora.up``, PEFT ``lora_A``/``lora_B``), transformers (``lora_linear_layer.up``), LoHa
(``hada_*``, with CP ``hada_t1``/``hada_t2``), LoKr (``lokr_*``), GLoRA (``a1``/``a2``/``b1``/``b2``), full
diffs (``diff``, ``diff_b``, ``w_norm``, ``b_norm``) and Fooocus's uint8-quantised patches (``.fooocus.patch``).
The decompositions follow the published LyCORIS definitions; ``lora.py`` maps the module names onto a model.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from foci.models.tensor_guard import (
    TensorSizeError,
    check_backed_by_storage,
    check_product,
    flat_shape,
    matmul_shape,
)

PatchKind = Literal["lora", "loha", "lokr", "glora", "diff", "fooocus"]
LoraState = dict[str, "torch.Tensor | tuple"]

# (suffix, kind, role). Roles of kind "diff" name the parameter they add to.
_LORA_FAMILIES = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"),  # kohya / A1111 / LoCon
    ("_lora.up.weight", "_lora.down.weight", None),  # diffusers attention processors
    (".lora.up.weight", ".lora.down.weight", None),  # diffusers LoRACompatibleLinear/Conv
    (".lora_B.weight", ".lora_A.weight", None),  # PEFT
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None),  # transformers text encoders
)
_SUFFIXES: tuple[tuple[str, str, str], ...] = (
    *((up, "lora", "up") for up, _, _ in _LORA_FAMILIES),
    *((down, "lora", "down") for _, down, _ in _LORA_FAMILIES),
    *((mid, "lora", "mid") for _, _, mid in _LORA_FAMILIES if mid),
    (".alpha", "alpha", "alpha"),
    *((f".hada_{role}", "loha", role) for role in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")),
    *((f".lokr_{role}", "lokr", role) for role in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2")),
    *((f".{role}.weight", "glora", role) for role in ("a1", "a2", "b1", "b2")),
    (".diff", "diff", "weight"),
    (".diff_b", "diff", "bias"),
    (".w_norm", "diff", "weight"),
    (".b_norm", "diff", "bias"),
)
_SUFFIXES_LONGEST_FIRST = tuple(sorted(_SUFFIXES, key=lambda entry: -len(entry[0])))


class LoraError(ValueError):
    """A LoRA file that cannot be read or used, with a message naming the file and what is wrong."""


@dataclass(frozen=True)
class Patch:
    """One change to one parameter (``param``: "weight" or "bias") of one module, as stored in a file."""

    kind: PatchKind
    param: str
    tensors: Mapping[str, torch.Tensor]
    alpha: float | None
    keys: tuple[str, ...]


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= header_len <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> LoraState:
    from safetensors import safe_open

    try:
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            json.loads(handle.read(header_len).decode("utf-8"))
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types from Rust
        raise LoraError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc


def _fooocus_entry(path: Path, key: str, value: tuple | list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if len(value) != 3 or not isinstance(value[0], torch.Tensor) or value[0].dtype != torch.uint8:
        raise LoraError(f"{path}: entry {key!r} is not a Fooocus (uint8 tensor, min, max) patch")
    try:
        low, high = (torch.as_tensor(v, dtype=torch.float32) for v in value[1:])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LoraError(f"{path}: entry {key!r} has a non-numeric min/max ({exc})") from exc
    return value[0], low, high


def _read_pickle(path: Path) -> LoraState:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse is reported as an unreadable file
        detail = " ".join(str(exc).split())[:200]
        raise LoraError(f"{path}: not a readable LoRA file ({type(exc).__name__}: {detail})") from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise LoraError(f"{path}: holds a {type(loaded).__name__}, not a dict of tensors")
    state: LoraState = {}
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            try:
                check_backed_by_storage(str(key), value)
            except TensorSizeError as error:
                raise LoraError(f"{path}: {error}") from None
            state[str(key)] = value
        elif isinstance(value, (tuple, list)):
            state[str(key)] = _fooocus_entry(path, str(key), value)
    return state


def read_lora_file(path: str | Path) -> LoraState:
    """All tensors of a LoRA file: safetensors, or a pickle read with ``torch.load(weights_only=True)``.

    Values are tensors, or ``(uint8 tensor, min, max)`` tuples (min/max as float32 tensors) for Fooocus patches.
    """
    path = Path(path)
    if not path.exists():
        raise LoraError(f"{path}: LoRA file not found")
    if not path.is_file():
        raise LoraError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise LoraError(f"{path}: LoRA file is empty")
    state = _read_safetensors(path) if _looks_like_safetensors(path) else _read_pickle(path)
    if not state:
        raise LoraError(f"{path}: holds no tensors")
    return state


# ----------------------------------------------------------------------------------------------------
# Grouping keys into patches
# ----------------------------------------------------------------------------------------------------


def _split_suffix(key: str) -> tuple[str, str, str] | None:
    """(base name, kind, role) of a patch key, or None when the key has no known suffix."""
    for suffix, kind, role in _SUFFIXES_LONGEST_FIRST:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], kind, role
    return None


def _family_of(key: str) -> int:
    return next(i for i, family in enumerate(_LORA_FAMILIES) if any(s and key.endswith(s) for s in family))


def _patch(
    kind: PatchKind,
    param: str,
    own: Mapping[str, tuple[str, torch.Tensor]],
    alpha: float | None,
    alpha_keys: tuple[str, ...],
) -> Patch:
    return Patch(
        kind=kind,
        param=param,
        tensors={role: value for role, (_, value) in own.items()},
        alpha=alpha,
        keys=tuple(key for key, _ in own.values()) + alpha_keys,
    )


def _complete(kind: str, roles: set[str]) -> bool:
    if kind == "loha":
        return {"w1_a", "w1_b", "w2_a", "w2_b"} <= roles and (("t1" in roles) == ("t2" in roles))
    if kind == "lokr":
        has_w1 = "w1" in roles or {"w1_a", "w1_b"} <= roles
        has_w2 = "w2" in roles or {"w2_a", "w2_b"} <= roles
        return has_w1 and has_w2
    if kind == "glora":
        return {"a1", "a2", "b1", "b2"} <= roles
    return False


def group_patches(state: Mapping[str, torch.Tensor | tuple]) -> tuple[dict[str, list[Patch]], list[str]]:
    """Group a LoRA file's tensors into patches per module base name.

    Returns ``(patches by base name, leftover keys)``: leftovers have no known suffix or belong to an incomplete
    group (e.g. an ``up`` without its ``down``, an ``alpha`` with nothing to scale).
    """
    # base name -> group ("lora0".."lora4" per naming family, "loha", "lokr", "glora", "diff", "alpha") -> role
    grouped: dict[str, dict[str, dict[str, tuple[str, torch.Tensor]]]] = {}
    patches: dict[str, list[Patch]] = {}
    leftovers: list[str] = []
    for key, value in state.items():
        if isinstance(value, tuple):
            base, _, leaf = key.rpartition(".")
            if not base or leaf not in ("weight", "bias"):
                leftovers.append(key)
                continue
            tensors = {"u8": value[0], "min": value[1], "max": value[2]}
            patches.setdefault(base, []).append(Patch("fooocus", leaf, tensors, None, (key,)))
            continue
        split = _split_suffix(key)
        if split is None:
            leftovers.append(key)
            continue
        base, kind, role = split
        group = f"lora{_family_of(key)}" if kind == "lora" else kind
        grouped.setdefault(base, {}).setdefault(group, {})[role] = (key, value)
    for base, groups in grouped.items():
        alpha_item = groups.get("alpha", {}).get("alpha")
        alpha = float(alpha_item[1].float().reshape(-1)[0].item()) if alpha_item is not None else None
        alpha_keys = (alpha_item[0],) if alpha_item is not None else ()
        found: list[Patch] = []
        for group, own in groups.items():
            if group.startswith("lora") and "up" in own and "down" in own:
                found.append(_patch("lora", "weight", own, alpha, alpha_keys))
            elif group in ("loha", "lokr", "glora") and _complete(group, set(own)):
                found.append(_patch(group, "weight", own, alpha, alpha_keys))  # type: ignore[arg-type]
            elif group == "diff":
                found.extend(_patch("diff", param, {"diff": item}, None, ()) for param, item in own.items())
        used = {key for patch in found for key in patch.keys}
        leftovers.extend(key for own in groups.values() for key, _ in own.values() if key not in used)
        if found:
            patches.setdefault(base, []).extend(found)
    return patches, leftovers


# ----------------------------------------------------------------------------------------------------
# Delta math (all in float32)
# ----------------------------------------------------------------------------------------------------


def _cp_product(core: torch.Tensor, right: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Tucker/CP reconstruction: ``left`` [rank, out], ``core`` [rank, rank, kh, kw], ``right`` [rank, in]."""
    return torch.einsum("abhw,bi,ao->oihw", core, right.flatten(1), left.flatten(1))


def _lora_delta(t: Mapping[str, torch.Tensor], alpha: float | None) -> tuple[torch.Tensor, float]:
    up, down = t["up"], t["down"]
    rank = down.shape[0]
    if "mid" in t:  # LoCon Tucker form: the mid kernel sits between down (1x1) and up (1x1)
        down = torch.einsum("bahw,ai->bihw", t["mid"], down.flatten(1))
    delta = up.flatten(1) @ down.flatten(1)
    return delta, (alpha / rank if alpha is not None else 1.0)


def _loha_delta(t: Mapping[str, torch.Tensor], alpha: float | None) -> tuple[torch.Tensor, float]:
    rank = t["w1_b"].shape[0]
    if "t1" in t:
        first = _cp_product(t["t1"], t["w1_b"], t["w1_a"])
        second = _cp_product(t["t2"], t["w2_b"], t["w2_a"])
    else:
        first = t["w1_a"].flatten(1) @ t["w1_b"].flatten(1)
        second = t["w2_a"].flatten(1) @ t["w2_b"].flatten(1)
    return first * second, (alpha / rank if alpha is not None else 1.0)


def _lokr_delta(t: Mapping[str, torch.Tensor], alpha: float | None) -> tuple[torch.Tensor, float]:
    rank = None
    if "w1" in t:
        w1 = t["w1"]
    else:
        rank = t["w1_b"].shape[0]
        w1 = t["w1_a"].flatten(1) @ t["w1_b"].flatten(1)
    if "w2" in t:
        w2 = t["w2"]
    else:
        rank = t["w2_b"].shape[0]
        w2 = _cp_product(t["t2"], t["w2_b"], t["w2_a"]) if "t2" in t else t["w2_a"].flatten(1) @ t["w2_b"].flatten(1)
    if w2.dim() == 4:
        w1 = w1.reshape(*w1.shape[:2], 1, 1)
    return torch.kron(w1, w2), (alpha / rank if alpha is not None and rank is not None else 1.0)


def _glora_delta(
    t: Mapping[str, torch.Tensor], alpha: float | None, weight: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """GLoRA: ΔW = W·A + B. Current LyCORIS stores a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in·k·k]; the
    first release stored a1 [r, in], a2 [out, r], b1 [r, in], b2 [out, r] (and only fits square weights)."""
    a1, a2, b1, b2 = (t[name].flatten(1) for name in ("a1", "a2", "b1", "b2"))
    flat = weight.flatten(1)
    old_layout = a1.shape[0] == a2.shape[1] == b1.shape[0] == b2.shape[1]
    new_layout = a2.shape[0] == a1.shape[1] == b2.shape[0] == b1.shape[1]
    if old_layout and (not new_layout or (a2.shape[0] == flat.shape[0] == flat.shape[1])):
        rank = a1.shape[0]
        delta = b2 @ b1 + (flat @ a2) @ a1
    else:
        rank = a2.shape[0]
        if weight.dim() > 2:
            delta = torch.einsum("oi...,ij->oj...", torch.einsum("oi...,ij->oj...", weight, a1), a2)
            delta = delta.reshape(weight.shape[0], -1) + b1 @ b2
        else:
            delta = (flat @ a1) @ a2 + b1 @ b2
    return delta, (alpha / rank if alpha is not None else 1.0)


def _cp_shape(core: tuple[int, ...], right: tuple[int, ...], left: tuple[int, ...]) -> tuple[int, ...]:
    return (flat_shape(left)[1], flat_shape(right)[1], *core[2:])


def _product_elements(patch: Patch, weight: torch.Tensor) -> int:
    """How many elements the patch's delta will have, from the factors' shapes alone (nothing is computed)."""
    shapes = {role: tuple(value.shape) for role, value in patch.tensors.items()}
    name = "/".join(patch.keys)
    if patch.kind == "lora":
        down = flat_shape(shapes["down"])
        if "mid" in shapes:
            mid = shapes["mid"]
            down = (mid[0], down[1] * math.prod(mid[2:]))
        return math.prod(matmul_shape(name, flat_shape(shapes["up"]), down))
    if patch.kind == "loha":
        if "t1" in shapes:
            first = math.prod(_cp_shape(shapes["t1"], shapes["w1_b"], shapes["w1_a"]))
            second = math.prod(_cp_shape(shapes["t2"], shapes["w2_b"], shapes["w2_a"]))
        else:
            first = math.prod(matmul_shape(name, flat_shape(shapes["w1_a"]), flat_shape(shapes["w1_b"])))
            second = math.prod(matmul_shape(name, flat_shape(shapes["w2_a"]), flat_shape(shapes["w2_b"])))
        check_product(name, first, weight.numel(), "the first LoHa product")
        return second
    if patch.kind == "lokr":
        factors = []
        for index in (1, 2):
            if f"w{index}" in shapes:
                factors.append(math.prod(shapes[f"w{index}"]))
            elif f"t{index}" in shapes:
                factors.append(math.prod(_cp_shape(shapes[f"t{index}"], shapes[f"w{index}_b"],
                                                   shapes[f"w{index}_a"])))
            else:
                factors.append(math.prod(matmul_shape(name, flat_shape(shapes[f"w{index}_a"]),
                                                      flat_shape(shapes[f"w{index}_b"]))))
        return factors[0] * factors[1]
    if patch.kind == "glora":
        b1, b2 = flat_shape(shapes["b1"]), flat_shape(shapes["b2"])
        return max(b1[0] * b2[1], b2[0] * b1[1])
    return max(math.prod(shape) for shape in shapes.values())


def patch_delta(patch: Patch, weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(delta, factor)`` of one patch for the float32 parameter ``weight`` (its current, partly patched value).

    The merge is ``weight += (strength · factor) · delta.reshape(weight.shape)``; ``factor`` is alpha/rank (1 without
    alpha). Tensors are moved to ``weight``'s device as float32. Raises :class:`LoraError` when the delta does not
    have as many elements as ``weight``.
    """
    name = "/".join(patch.keys)
    try:
        for role, value in patch.tensors.items():
            check_backed_by_storage(f"{name}.{role}", value)
        elements = _product_elements(patch, weight)
        if elements > weight.numel() or (patch.kind != "glora" and elements != weight.numel()):
            check_product(name, elements, weight.numel(), f"the {patch.kind} product")
    except TensorSizeError as error:
        raise LoraError(str(error)) from None
    t = {role: value.to(device=weight.device, dtype=torch.float32) for role, value in patch.tensors.items()}
    if patch.kind == "lora":
        delta, factor = _lora_delta(t, patch.alpha)
    elif patch.kind == "loha":
        delta, factor = _loha_delta(t, patch.alpha)
    elif patch.kind == "lokr":
        delta, factor = _lokr_delta(t, patch.alpha)
    elif patch.kind == "glora":
        delta, factor = _glora_delta(t, patch.alpha, weight)
    elif patch.kind == "diff":
        delta, factor = t["diff"], 1.0
    else:  # fooocus: uint8 quantised difference
        delta, factor = (t["u8"] / 255.0) * (t["max"] - t["min"]) + t["min"], 1.0
    if delta.numel() != weight.numel():
        raise LoraError(
            f"{'/'.join(patch.keys)}: delta of shape {tuple(delta.shape)} does not fit a parameter "
            f"of shape {tuple(weight.shape)}"
        )
    return delta.reshape(weight.shape), factor
