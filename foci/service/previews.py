"""Live previews of a running sampler: the predicted clean latent turned into a small RGB picture.

:class:`PreviewRenderer` uses Fooocus's VAE approximation (``xlvaeapp.pth`` in the ``vae_approx`` model folder,
see :mod:`foci.models.vae_approx`) when that file is there and sound: a picture a quarter of the image's size.
Otherwise — and whenever that file is missing, refused or fails — the latent is mapped to RGB by a fixed linear map,
the widely published SDXL latent-to-RGB factors (a 4×3 matrix plus a bias, fitted on the UNet-space latent, i.e.
VAE latent × 0.13025): :func:`latent_preview`.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from foci.files.folders import ModelFolders
    from foci.models.vae_approx import VaeApprox

_log = logging.getLogger(__name__)
VAE_APPROX_KIND = "vae_approx"
SDXL_VAE_APPROX_FILE = "xlvaeapp.pth"

# Rows: latent channels 0…3; columns: R, G, B. Output is in −1…1.
SDXL_LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS: tuple[float, float, float] = (0.1084, -0.0175, -0.0011)
_PIXELS_PER_LATENT = 8


def _as_latent(denoised: torch.Tensor, max_size: int) -> torch.Tensor:
    """``denoised`` as a detached ``[4, h, w]`` tensor, after checking its type and shape."""
    if not isinstance(denoised, torch.Tensor):
        raise TypeError(f"a preview needs a torch tensor, got {type(denoised).__name__}")
    latent = denoised.detach()
    if latent.ndim == 4:
        latent = latent[0]
    if latent.ndim != 3 or latent.shape[0] != len(SDXL_LATENT_RGB_FACTORS) or min(latent.shape[1:]) < 1:
        raise ValueError(f"a preview needs a [1, 4, h, w] or [4, h, w] SDXL latent, got {tuple(denoised.shape)}")
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    return latent


def _to_picture(rgb: torch.Tensor) -> Image.Image:
    """An ``[h, w, 3]`` tensor in −1…1 as an RGB picture."""
    rgb = torch.nan_to_num(rgb.float(), nan=0.0, posinf=1.0, neginf=-1.0)
    pixels = (rgb * 127.5 + 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def _resize(picture: Image.Image, target: int) -> Image.Image:
    """``picture`` scaled so its longer side is ``target`` (unchanged if it already is)."""
    width, height = picture.size
    longest = max(width, height)
    if target == longest:
        return picture
    scale = target / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BILINEAR if target > longest else Image.Resampling.BOX
    return picture.resize(size, resample)


def latent_preview(denoised: torch.Tensor, *, max_size: int = 256) -> Image.Image:
    """An RGB preview of a UNet-space SDXL latent ``[1, 4, h, w]`` or ``[4, h, w]`` (any device and dtype) by the
    linear latent-to-RGB factors.

    The picture is scaled up toward the image's own size (8 pixels per latent cell) but its longer side never
    exceeds ``max_size``.
    """
    latent = _as_latent(denoised, max_size).float()
    factors = torch.tensor(SDXL_LATENT_RGB_FACTORS, dtype=torch.float32, device=latent.device)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32, device=latent.device)
    picture = _to_picture(torch.einsum("chw,cr->hwr", latent, factors) + bias)
    return _resize(picture, min(max_size, max(picture.size) * _PIXELS_PER_LATENT))


def vae_approx_preview(model: VaeApprox, denoised: torch.Tensor, *, max_size: int = 256) -> Image.Image:
    """An RGB preview of a UNet-space latent by a :class:`~foci.models.vae_approx.VaeApprox` model: twice the
    latent's size (a quarter of the image's), scaled down only if its longer side exceeds ``max_size``. The latent
    is moved to the model's device and dtype."""
    latent = _as_latent(denoised, max_size)
    parameter = next(model.parameters())
    with torch.inference_mode():
        rgb = model(latent[None].to(device=parameter.device, dtype=parameter.dtype))[0]
    picture = _to_picture(rgb.permute(1, 2, 0))
    return _resize(picture, min(max_size, max(picture.size)))


class PreviewRenderer:
    """Live previews for one worker: the VAE approximation when ``folders`` holds it (``vae_approx`` kind,
    ``xlvaeapp.pth``), else the linear latent preview.

    The file is looked up lazily and again at most every ``recheck_interval`` seconds, so a file downloaded or
    replaced while the server runs is picked up; a file that cannot be loaded (unsafe, wrong shapes, corrupt) is
    refused once with a logged warning until it changes. The model is moved to the device of the latents it gets.
    Thread-safe.
    """

    def __init__(self, folders: ModelFolders | None, *, max_size: int = 256,
                 file_name: str = SDXL_VAE_APPROX_FILE, recheck_interval: float = 30.0) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if recheck_interval < 0:
            raise ValueError(f"recheck_interval must not be negative, got {recheck_interval}")
        self.folders = folders
        self.max_size = max_size
        self.file_name = file_name
        self.recheck_interval = recheck_interval
        self._lock = threading.Lock()
        self._model: VaeApprox | None = None
        self._source: tuple[Path, int, int] | None = None  # path, size, mtime of the file last loaded or refused
        self._looked_at = -math.inf
        self._method = "linear"

    @property
    def method(self) -> str:
        """``"vae_approx"`` or ``"linear"``: how the last preview was made."""
        return self._method

    @property
    def model_path(self) -> Path | None:
        """The VAE-approximation file in use, or None."""
        with self._lock:
            return self._source[0] if self._model is not None and self._source is not None else None

    def __call__(self, denoised: torch.Tensor) -> Image.Image:
        """The preview of a UNet-space SDXL latent ``[1, 4, h, w]`` or ``[4, h, w]``."""
        _as_latent(denoised, self.max_size)  # bad input is the caller's error, not a reason to drop the model
        with self._lock:
            model = self._current_model(denoised.device)
            if model is not None:
                try:
                    picture = vae_approx_preview(model, denoised, max_size=self.max_size)
                except (RuntimeError, ValueError) as error:
                    _log.warning("live previews: the VAE approximation %s failed (%s); using the linear latent "
                                 "preview", self._source[0] if self._source else "?", error)
                    self._model = None  # the source stays recorded: not retried until the file changes
                else:
                    self._method = "vae_approx"
                    return picture
            self._method = "linear"
        return latent_preview(denoised, max_size=self.max_size)

    def _current_model(self, device: torch.device) -> VaeApprox | None:
        now = time.monotonic()
        if self.folders is not None and now - self._looked_at >= self.recheck_interval:
            self._looked_at = now
            self._refresh()
        model = self._model
        if model is not None and next(model.parameters()).device != device:
            try:
                model = self._model = model.to(device)
            except (RuntimeError, ValueError) as error:
                _log.warning("live previews: cannot move the VAE approximation to %s (%s); using the linear "
                             "latent preview", device, error)
                model = self._model = None
        return model

    def _refresh(self) -> None:
        from foci.files.folders import ModelFoldersError

        assert self.folders is not None
        try:
            path = self.folders.find(VAE_APPROX_KIND, self.file_name)
            stat = path.stat() if path is not None else None
        except (ModelFoldersError, OSError) as error:
            _log.warning("live previews: cannot look for %s (%s)", self.file_name, error)
            path, stat = None, None
        if path is None or stat is None:
            self._model, self._source = None, None
            return
        source = (path, stat.st_size, stat.st_mtime_ns)
        if source == self._source:
            return
        from foci.models.vae_approx import VaeApproxError, load_vae_approx

        self._source = source
        try:
            self._model = load_vae_approx(path)
        except VaeApproxError as error:
            self._model = None
            _log.warning("live previews: %s refused: %s — using the linear latent preview", path, error)
        else:
            _log.info("live previews: using the VAE approximation %s", path)


def png_base64(picture: Image.Image) -> str:
    """The picture as a base64-encoded PNG (what :attr:`JobEvent.preview_png` carries)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
