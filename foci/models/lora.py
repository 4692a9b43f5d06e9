"""LoRAs merged into a loaded SDXL model's weights, reversibly (§2.11).

:class:`LoraPatcher` maps every accepted LoRA module name onto a parameter of our diffusers/transformers modules,
merges the deltas in float32 (cast back to each parameter's dtype once, after all files), and restores the
touched parameters bit-exactly from copies taken before the first merge.

Accepted module names (``<x>`` = a module path):

* UNet: kohya ``lora_unet_<ldm path>`` and ``lora_unet_<diffusers path>`` (dots as ``_``), raw
  ``diffusion_model.<ldm path>`` (also Fooocus patch keys ``diffusion_model.<ldm path>.weight``), diffusers
  ``unet.<path>`` / ``<path>`` and the attention-processor forms ``…attn1.processor.to_q`` / ``…processor.to_out``.
  ldm names come from diffusers' own ``convert_ldm_unet_checkpoint`` run on meta tensors, so they are exactly the
  names the checkpoint loader converted, for any UNet size.
* CLIP-L (``text_encoder``): ``lora_te1_text_model_<path>`` and ``text_encoder.[text_model.]<path>``.
* CLIP-G (``text_encoder_2``): ``lora_te2_text_model_<path>``, ``lora_te2_text_projection`` and
  ``text_encoder_2.[text_model.]<path>``; without a CLIP-L (the refiner) CLIP-G answers to ``lora_te_`` and
  ``text_encoder.`` instead, like ComfyUI.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foci.models.checkpoint import UNET_PREFIX
from foci.models.ldm_names import unet_ldm_key
from foci.models.lora_formats import LoraError, Patch, group_patches, patch_delta, read_lora_file

__all__ = [
    "LoraError",
    "LoraMatch",
    "LoraPatcher",
    "lora_module_names",
    "read_lora_file",
    "unet_ldm_names",
]

log = logging.getLogger(__name__)

MAX_UNMATCHED_KEYS = 12
"""A file with more keys than this matching neither the UNet nor the text encoders is skipped (§2.11)."""

Target = tuple[str, str]  # (component, module path inside it)


@dataclass
class LoraMatch:
    """What happened to one LoRA file: how many parameters it patched, where, and which keys matched nothing."""

    name: str
    weight: float
    matched: int
    unmatched: list[str]
    targets: dict[str, int]
    """Component ("unet", "text_encoder", "text_encoder_2") → number of its parameters patched."""
    mismatched: list[str] = field(default_factory=list)
    """Keys that named a module but whose delta does not fit its parameter (not merged)."""
    skipped: str | None = None
    """Why the whole file was not merged (weight 0, model mismatch); None when merged."""


# ----------------------------------------------------------------------------------------------------
# Name maps
# ----------------------------------------------------------------------------------------------------


def unet_ldm_names(unet: torch.nn.Module) -> dict[str, str]:
    """Original (ldm) UNet parameter name, without ``model.diffusion_model.`` → our diffusers parameter name.

    The ldm names of this UNet's config are generated like the synthetic checkpoints' layout; diffusers'
    ``convert_ldm_unet_checkpoint`` then converts a dict of meta tensors and each output is traced back to its
    input by tensor identity, so the map is exactly the conversion the checkpoint loader applied.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = dict(unet.config)
    sources: dict[str, torch.Tensor] = {}
    for name, _ in unet.named_parameters():
        try:
            sources[UNET_PREFIX + unet_ldm_key(name, config)] = torch.empty(0, device="meta")
        except (KeyError, IndexError, ValueError):
            continue  # a module the original layout does not have: reachable by its diffusers name only
    converted = convert_ldm_unet_checkpoint(sources, config)
    ldm_by_identity = {id(tensor): key.removeprefix(UNET_PREFIX) for key, tensor in sources.items()}
    return {
        ldm_by_identity[id(tensor)]: name
        for name, tensor in converted.items()
        if tensor is not None and id(tensor) in ldm_by_identity
    }


def _attention_processor_name(path: str) -> str | None:
    """The old diffusers attention-processor LoRA name of an attention projection (``to_out.0`` → ``to_out``)."""
    for projection in ("to_q", "to_k", "to_v"):
        if path.endswith(f".{projection}"):
            return f"{path[: -len(projection)]}processor.{projection}"
    if path.endswith(".to_out.0"):
        return f"{path[: -len('to_out.0')]}processor.to_out"
    return None


def _unet_names(unet: torch.nn.Module) -> dict[str, Target]:
    names: dict[str, Target] = {}
    ldm_of = {diffusers: ldm for ldm, diffusers in unet_ldm_names(unet).items()}
    for param_name, _ in unet.named_parameters():
        path, _, leaf = param_name.rpartition(".")
        if leaf != "weight":
            continue
        target = ("unet", path)
        names[f"lora_unet_{path.replace('.', '_')}"] = target
        names[f"unet.{path}"] = target
        names[path] = target
        processor = _attention_processor_name(path)
        if processor is not None:
            names[f"unet.{processor}"] = target
            names[processor] = target
        ldm = ldm_of.get(param_name)
        if ldm is not None:
            ldm_path = ldm.rpartition(".")[0]
            names[f"lora_unet_{ldm_path.replace('.', '_')}"] = target
            names[f"diffusion_model.{ldm_path}"] = target
    return names


def _clip_names(module: torch.nn.Module, component: str, kohya: str, diffusers: str) -> dict[str, Target]:
    """Names of one CLIP text encoder's modules; handles models with and without the ``text_model.`` level."""
    names: dict[str, Target] = {}
    for param_name, _ in module.named_parameters():
        path, _, leaf = param_name.rpartition(".")
        if leaf != "weight":
            continue
        target = (component, path)
        inner = path.removeprefix("text_model.")
        full = inner if inner == "text_projection" else f"text_model.{inner}"
        names[f"{kohya}{full.replace('.', '_')}"] = target
        names[f"{diffusers}{full}"] = target
        names[f"{diffusers}{inner}"] = target
    return names


def lora_module_names(
    unet: torch.nn.Module | None,
    text_encoder: torch.nn.Module | None = None,
    text_encoder_2: torch.nn.Module | None = None,
) -> dict[str, Target]:
    """Every accepted LoRA module name → (component, module path) of the given modules."""
    names: dict[str, Target] = {}
    if text_encoder is not None:
        names.update(_clip_names(text_encoder, "text_encoder", "lora_te1_", "text_encoder."))
    if text_encoder_2 is not None:
        if text_encoder is not None:
            names.update(_clip_names(text_encoder_2, "text_encoder_2", "lora_te2_", "text_encoder_2."))
        else:
            names.update(_clip_names(text_encoder_2, "text_encoder_2", "lora_te_", "text_encoder."))
    if unet is not None:
        names.update(_unet_names(unet))
    return names


# ----------------------------------------------------------------------------------------------------
# The patcher
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Planned:
    component: str
    param: str
    patch: Patch
    strength: float
    file_index: int


class LoraPatcher:
    """Merges LoRA deltas into a loaded SDXL model's weights and restores them bit-exactly.

    Hold one per loaded model (base, refiner). Parameters are changed in place (same tensor objects, so hooks and
    references stay valid). Originals of only the touched parameters are copied to ``backup_device`` before the
    first merge and written back by :meth:`restore`.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        text_encoder: torch.nn.Module | None = None,
        text_encoder_2: torch.nn.Module | None = None,
        *,
        backup_device: str | torch.device = "cpu",
    ) -> None:
        self._components: dict[str, torch.nn.Module] = {"unet": unet}
        if text_encoder is not None:
            self._components["text_encoder"] = text_encoder
        if text_encoder_2 is not None:
            self._components["text_encoder_2"] = text_encoder_2
        self._text_encoders = (text_encoder, text_encoder_2)
        self._backup_device = torch.device(backup_device)
        self._names: dict[str, Target] | None = None
        self._backups: dict[tuple[str, str], torch.Tensor] = {}
        self._active: list[tuple[str, float]] = []

    @property
    def active(self) -> list[tuple[str, float]]:
        """(file name, weight) of the files currently merged, in merge order."""
        return list(self._active)

    @property
    def names(self) -> dict[str, Target]:
        """The accepted module names of this model (built on first use)."""
        if self._names is None:
            self._names = lora_module_names(self._components["unet"], *self._text_encoders)
        return self._names

    def apply(
        self, loras: Sequence[tuple[Path, float]], *, unet_only: Sequence[tuple[Path, float]] = ()
    ) -> list[LoraMatch]:
        """Restore the originals, then merge ``loras`` (UNet and text encoders) and ``unet_only`` (UNet only,
        e.g. inpaint or performance patches), in that order. Returns one report per file, in the same order.

        Files are read before anything changes: a :class:`LoraError` leaves the model as it was. A file with more
        than 12 keys matching neither the UNet nor the text encoders is skipped with a warning; weight 0 files are
        skipped unread.
        """
        requests = [(Path(p), float(w), False) for p, w in loras] + [(Path(p), float(w), True) for p, w in unet_only]
        reports: list[LoraMatch] = []
        planned: list[_Planned] = []
        for index, (path, weight, only_unet) in enumerate(requests):
            report, patches = self._plan(path, weight, only_unet, index)
            reports.append(report)
            planned.extend(patches)
        self.restore()
        by_param: dict[tuple[str, str], list[_Planned]] = {}
        for item in planned:
            by_param.setdefault((item.component, item.param), []).append(item)
        merged_params: dict[int, dict[str, int]] = {}
        with torch.no_grad():
            for (component, param_name), items in by_param.items():
                for item in self._merge(component, param_name, items, reports):
                    counts = merged_params.setdefault(item.file_index, {})
                    counts[component] = counts.get(component, 0) + 1
        for index, report in enumerate(reports):
            if report.skipped is None:
                report.targets = dict(sorted(merged_params.get(index, {}).items()))
                report.matched = sum(report.targets.values())
        self._active = [(r.name, r.weight) for r in reports if r.skipped is None and r.matched]
        return reports

    def restore(self) -> None:
        """Write the original values back into every touched parameter (bit-exact) and forget the copies."""
        with torch.no_grad():
            for (component, param_name), original in self._backups.items():
                parameter = self._components[component].get_parameter(param_name)
                parameter.data.copy_(original.to(parameter.device))
        self._backups.clear()
        self._active = []

    # ------------------------------------------------------------------------------------------------

    def _plan(self, path: Path, weight: float, only_unet: bool, index: int) -> tuple[LoraMatch, list[_Planned]]:
        name = path.name
        if weight == 0:
            return LoraMatch(name, weight, 0, [], {}, skipped="weight 0"), []
        patches, leftovers = group_patches(read_lora_file(path))
        unmatched = list(leftovers)
        planned: list[_Planned] = []
        for base, base_patches in patches.items():
            target = self.names.get(base)
            if target is None:
                unmatched.extend(key for patch in base_patches for key in patch.keys)
                continue
            component, module_path = target
            if only_unet and component != "unet":
                continue
            module = self._components[component].get_submodule(module_path)
            for patch in base_patches:
                if getattr(module, patch.param, None) is None:
                    unmatched.extend(patch.keys)
                    continue
                planned.append(_Planned(component, f"{module_path}.{patch.param}", patch, weight, index))
        unmatched.sort()
        if len(unmatched) > MAX_UNMATCHED_KEYS:
            log.warning(
                "LoRA %s skipped: %d keys match neither the UNet nor the text encoders (e.g. %s); "
                "is it made for another model family?",
                path,
                len(unmatched),
                ", ".join(unmatched[:3]),
            )
            return LoraMatch(name, weight, 0, unmatched, {}, skipped="model mismatch"), []
        if unmatched:
            log.info("LoRA %s: %d unmatched keys: %s", path, len(unmatched), ", ".join(unmatched))
        return LoraMatch(name, weight, len(planned), unmatched, {}), planned

    def _merge(
        self, component: str, param_name: str, items: list[_Planned], reports: list[LoraMatch]
    ) -> list[_Planned]:
        """Merge all patches of one parameter in float32, cast back once; returns the patches merged."""
        parameter = self._components[component].get_parameter(param_name)
        merged_weight = parameter.detach().to(torch.float32, copy=True)
        merged: list[_Planned] = []
        for item in items:
            try:
                delta, factor = patch_delta(item.patch, merged_weight)
            except LoraError as exc:
                log.warning("LoRA %s: %s", reports[item.file_index].name, exc)
                reports[item.file_index].mismatched.extend(item.patch.keys)
                continue
            merged_weight += (item.strength * factor) * delta
            merged.append(item)
        if merged:
            key = (component, param_name)
            if key not in self._backups:
                self._backups[key] = parameter.detach().to(self._backup_device, copy=True)
            parameter.data.copy_(merged_weight)
        return merged
