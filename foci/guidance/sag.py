"""Self-Attention Guidance (Hong et al., ICCV 2023) as ComfyUI's ``SelfAttentionGuidance`` node computes it.

A custom diffusers attention processor on the UNet mid-block's first self-attention (``attn1``) records, for
every sample of the most recent UNet call, how much attention each key position receives (softmax
probabilities averaged over heads, summed over queries). For the unconditional branch, positions receiving
more than the average (> 1.0) are where the model "looks"; x0_uncond is Gaussian-blurred there, re-noised
with the same noise, evaluated again by the unconditional branch, and the difference to the blurred image is
added to the guided prediction: ``x0 = x0_guided + (degraded − x0_sag)·scale`` (in eps form this is the
paper's ``s·(eps_uncond − eps_sag)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foci.models.unet_patch import Undo, UnetPatch, swap_attention_processor

SAG_THRESHOLD = 1.0
SAG_BLUR_KERNEL = 9
MIN_LATENT_SIDE = 5  # ComfyUI skips SAG when a latent side is <= 4 (too small for the blur's padding)


def gaussian_blur(image: Tensor, *, kernel_size: int, sigma: float) -> Tensor:
    """Depth-wise Gaussian blur: kernel ``exp(−0.5·(x/σ)²)`` on ``linspace(−k/2, k/2, k)``, reflect pad."""
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (offsets / sigma).pow(2))
    kernel_1d = (pdf / pdf.sum()).to(device=image.device, dtype=image.dtype)
    kernel_2d = torch.mm(kernel_1d[:, None], kernel_1d[None, :])
    channels = image.shape[-3]
    kernel_2d = kernel_2d.expand(channels, 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    image = F.pad(image, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(image, kernel_2d, groups=channels)


class AttentionRecordingProcessor:
    """Classic (explicit-softmax) attention that keeps the per-key attention mass of the last call.

    ``received`` is ``[batch, keys]``: probabilities averaged over heads then summed over queries.
    """

    def __init__(self) -> None:
        self.received: Tensor | None = None
        self.query_length: int = 0

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args: object,
                 **kwargs: object) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)  # [batch·heads, queries, keys]

        self.query_length = probs.shape[1]
        per_sample = probs.detach().reshape(batch_size, -1, probs.shape[1], probs.shape[2])
        self.received = per_sample.mean(1).sum(1)

        hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def degrade_by_attention(x0: Tensor, received: Tensor, query_length: int, *, blur_sigma: float,
                         threshold: float = SAG_THRESHOLD) -> Tensor:
    """Blur ``x0`` where the recorded attention mass exceeds ``threshold``, keep it elsewhere.

    The per-key mask lives at the attention resolution and is nearest-upsampled to the latent size.
    """
    batch, _, lat_h, lat_w = x0.shape
    mask = received > threshold
    ratio = 2 ** (math.ceil(math.sqrt(lat_h * lat_w / query_length)) - 1).bit_length()
    mid_shape = [math.ceil(lat_h / ratio), math.ceil(lat_w / ratio)]
    mask = mask.reshape(batch, *mid_shape).unsqueeze(1).type(received.dtype)
    mask = F.interpolate(mask, (lat_h, lat_w))
    blurred = gaussian_blur(x0, kernel_size=SAG_BLUR_KERNEL, sigma=blur_sigma)
    return blurred * mask + x0 * (1 - mask)


class SelfAttentionGuidance(UnetPatch):
    """SAG for a diffusers SDXL-style UNet: attach it (a :class:`UnetPatch`) before the UNet calls, ``apply()``
    after CFG.

    ``uncond_index`` is the chunk of the recorded batch that holds the unconditional branch (the pipeline
    batches ``[positive, negative]``, so 1). The recorded attention is from the most recent UNet call.
    """

    def __init__(self, unet: nn.Module, *, scale: float = 0.5, blur_sigma: float = 2.0,
                 uncond_index: int = 1) -> None:
        super().__init__(unet)
        self.scale = scale
        self.blur_sigma = blur_sigma
        self.uncond_index = uncond_index
        self.recorder = AttentionRecordingProcessor()

    @property
    def attention_module(self) -> nn.Module:
        """The mid block's first transformer self-attention (``attn1``)."""
        return self.unet.mid_block.attentions[0].transformer_blocks[0].attn1

    def _install(self) -> list[Undo]:
        """The recording processor on that one module; detaching restores it and drops the recording."""
        return [self._forget_recording, swap_attention_processor(self.attention_module, self.recorder)]

    def _forget_recording(self) -> None:
        self.recorder.received = None

    def apply(self, *, x: Tensor, sigma: Tensor, x0_uncond: Tensor, x0_guided: Tensor,
              evaluate_uncond: Callable[[Tensor], Tensor]) -> Tensor:
        """Return the SAG-corrected x0.

        ``x``: the noisy latent; ``sigma``: its noise level (``evaluate_uncond`` must use the same);
        ``x0_uncond``: the unconditional x0 of the last UNet call; ``x0_guided``: the CFG result;
        ``evaluate_uncond(x_noised)`` → the unconditional x0 at ``x_noised``. Latents with a side <= 4 are
        returned unchanged (as ComfyUI does).
        """
        del sigma  # part of the call contract; the noise level is carried by evaluate_uncond
        if min(x0_guided.shape[2:]) < MIN_LATENT_SIDE:
            return x0_guided
        received = self.recorder.received
        if received is None:
            raise RuntimeError("SelfAttentionGuidance has no recorded attention: attach() it first")
        count = x0_uncond.shape[0]
        start = self.uncond_index * count
        if received.shape[0] < start + count:
            raise RuntimeError(
                f"recorded batch of {received.shape[0]} has no unconditional chunk {self.uncond_index}"
            )
        uncond_received = received[start:start + count]
        degraded = degrade_by_attention(x0_uncond, uncond_received, self.recorder.query_length,
                                        blur_sigma=self.blur_sigma)
        degraded_noised = degraded + x - x0_uncond
        x0_sag = evaluate_uncond(degraded_noised)
        return x0_guided + (degraded - x0_sag) * self.scale
