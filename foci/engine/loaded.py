"""A checkpoint as the engine holds it in its cache: components, files, merged LoRAs and the prompt encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foci.models.checkpoint import SDXLComponents
from foci.models.lora import LoraPatcher
from foci.text.encoder import PromptEncoder


@dataclass
class LoadedModel:
    """One cached model; ``loras`` is the set currently merged into its weights (resolved paths, weights)."""

    components: SDXLComponents
    path: Path
    vae_path: Path | None
    key: tuple = ()
    patcher: LoraPatcher | None = None
    loras: list[tuple[Path, float]] = field(default_factory=list)
    encoder: PromptEncoder | None = None
