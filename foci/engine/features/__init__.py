"""Features: optional capabilities of a generation, one module each, plugged into the recipe's steps.

``FEATURES`` is the tuple the engine uses by default (hooks run in this order); a feature joins by adding its
class here. An engine can be given another tuple (``Engine(features=...)``).
"""

from __future__ import annotations

from foci.engine.features.base import Feature
from foci.engine.features.freeu import FreeUFeature
from foci.engine.features.inpaint import InpaintFeature
from foci.engine.features.sag import SagFeature
from foci.engine.features.vary_upscale import UpscaleOrVaryFeature

FEATURES: tuple[type[Feature], ...] = (UpscaleOrVaryFeature, InpaintFeature, FreeUFeature, SagFeature)

__all__ = ["FEATURES", "Feature", "FreeUFeature", "InpaintFeature", "SagFeature", "UpscaleOrVaryFeature"]
