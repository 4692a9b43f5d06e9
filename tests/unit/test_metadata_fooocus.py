"""Metadata as Fooocus 2.5.5 writes and reads it (§1.11): Fooocus-written files read by Foci, and Foci-written
files read by the rules of Fooocus's own reader (re-stated here from the spec and Fooocus's documented behaviour,
independently of Foci's reader)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from foci.records.metadata import task_from_metadata
from foci.records.outputs import read_metadata
from foci.task import GenerationTask, LoraSpec

MODEL_FILES = ["juggernautXL_v8Rundiffusion.safetensors"]
LORA_FILES = ["sd_xl_offset_example-lora_1.0.safetensors", "sub/detail.safetensors",
              "sdxl_lightning_4step_lora.safetensors", "sdxl_hyper_sd_4step_lora.safetensors",
              "sdxl_lcm_lora.safetensors"]
VAE_FILES = ["sdxl_vae.safetensors", "extra/anime_vae.safetensors"]


def restore(payload: str | dict) -> GenerationTask:
    return task_from_metadata(payload, model_files=MODEL_FILES, lora_files=LORA_FILES, vae_files=VAE_FILES)


# ------------------------------------------------------------------------------ a PNG written as Fooocus does
def png_with_text(chunks: list[tuple[str, str]]) -> bytes:
    """A 4×4 PNG with the given tEXt chunks right after IHDR, built byte by byte (Fooocus's ``PngInfo.add_text``
    writes Latin-1 tEXt chunks: key, NUL, value)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    text = b"".join(chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")) for key, value in chunks)
    return data[:ihdr_end] + text + data[ihdr_end:]


def fooocus_json(fields: dict[str, object]) -> str:
    """Fooocus's fooocus-scheme payload: ``json.dumps`` of the keys sorted (default separators, ASCII)."""
    return json.dumps(dict(sorted(fields.items())))


# A Lightning image as Fooocus 2.5.5 records it: one user LoRA, then the performance LoRA, in both `loras`
# ([stem, weight, hash]) and `lora_combined_N` ("stem : weight"); the forced Lightning settings; clip_skip 2 is
# written because it is > 1; refiner "None" without a hash; VAE stem "Default (model)".
FOOOCUS_LIGHTNING = {
    "adaptive_cfg": 1.0,
    "adm_guidance": "(1.0, 1.0, 0.0)",
    "base_model": "juggernautXL_v8Rundiffusion",
    "base_model_hash": "aeb7e9e689",
    "clip_skip": 2,
    "full_negative_prompt": ["(worst quality, low quality, normal quality, lowres, low details, oversaturated)"],
    "full_prompt": ["cinematic still a red fox in the snow . emotional, harmonious, vignette, 4k epic detailed",
                    "a red fox in the snow, intricate, elegant, highly detailed"],
    "guidance_scale": 1.0,
    "lora_combined_1": "sd_xl_offset_example-lora_1.0 : 0.1",
    "lora_combined_2": "sdxl_lightning_4step_lora : 1.0",
    "loras": [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"], ["sdxl_lightning_4step_lora", 1.0, "0ec4c9c6ff"]],
    "metadata_scheme": "fooocus",
    "negative_prompt": "",
    "performance": "Lightning",
    "prompt": "a red fox in the snow",
    "prompt_expansion": "a red fox in the snow, intricate, elegant, highly detailed",
    "refiner_model": "None",
    "refiner_switch": 1.0,
    "resolution": "(1152, 896)",
    "sampler": "euler",
    "scheduler": "sgm_uniform",
    "seed": "1234567",
    "sharpness": 0.0,
    "steps": 4,
    "styles": "['Fooocus V2', 'Fooocus Enhance', 'Fooocus Sharp']",
    "vae": "Default (model)",
    "version": "Fooocus v2.5.5",
}


def test_fooocus_written_lightning_png_reads_without_the_performance_lora(tmp_path: Path) -> None:
    path = tmp_path / "2024-06-01_12-00-00_1234.png"
    path.write_bytes(png_with_text([("parameters", fooocus_json(FOOOCUS_LIGHTNING)), ("fooocus_scheme", "fooocus")]))
    scheme, payload = read_metadata(path)
    assert scheme == "fooocus" and payload == FOOOCUS_LIGHTNING
    task = restore(payload)
    assert task.loras == [LoraSpec(name="sd_xl_offset_example-lora_1.0.safetensors", weight=0.1)]
    assert (task.performance, task.steps, task.sampler, task.scheduler) == ("Lightning", 4, "euler", "sgm_uniform")
    assert (task.guidance_scale, task.sharpness, task.adaptive_cfg, task.refiner_switch) == (1.0, 0.0, 1.0, 1.0)
    assert (task.adm_scaler_positive, task.adm_scaler_negative, task.adm_scaler_end) == (1.0, 1.0, 0.0)
    assert (task.refiner_model, task.vae, task.clip_skip, task.seed) == (None, None, 2, 1234567)
    assert task.styles == ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"]
    assert (task.prompt, task.aspect_ratio, task.base_model) == (
        "a red fox in the snow", "1152*896", "juggernautXL_v8Rundiffusion.safetensors")


def test_log_json_with_lora_file_names_also_drops_the_performance_lora() -> None:
    # log.html's "Copy to Clipboard" JSON has no `loras` list and keeps the file names in lora_combined_N.
    data = {key: value for key, value in FOOOCUS_LIGHTNING.items() if key not in ("loras", "full_prompt")}
    data.update({"lora_combined_1": "sd_xl_offset_example-lora_1.0.safetensors : 0.1",
                 "lora_combined_2": "sdxl_lightning_4step_lora.safetensors : 1.0"})
    assert restore(data).loras == [LoraSpec(name="sd_xl_offset_example-lora_1.0.safetensors", weight=0.1)]


@pytest.mark.parametrize(("performance", "lora", "weight"), [
    ("Extreme Speed", "sdxl_lcm_lora", 1.0), ("Hyper-SD", "sdxl_hyper_sd_4step_lora", 0.8)])
def test_each_performance_drops_only_its_own_lora(performance: str, lora: str, weight: float) -> None:
    data = dict(FOOOCUS_LIGHTNING, performance=performance,
                loras=[["sdxl_lightning_4step_lora", 0.5, "0ec4c9c6ff"], [lora, weight, "1111111111"]])
    # A speed LoRA the user picked for another mode is a user LoRA (Fooocus drops only the recorded mode's one).
    assert restore(data).loras == [LoraSpec(name="sdxl_lightning_4step_lora.safetensors", weight=0.5)]


def test_fooocus_written_hyper_sd_a1111_text_drops_the_performance_lora() -> None:
    text = (
        "cinematic still a cat . emotional, harmonious, vignette, 4k epic detailed, a cat, intricate\n"
        "Negative prompt: (worst quality, low quality, normal quality, lowres, low details, oversaturated)\n"
        'Steps: 4, Sampler: DPM++ SDE Karras, Seed: 7, Size: 1152x896, CFG scale: 1.0, Sharpness: 0.0, '
        'ADM Guidance: "(1.0, 1.0, 0.0)", Model: juggernautXL_v8Rundiffusion, Model hash: aeb7e9e689, '
        "Performance: Hyper-SD, Scheduler: karras, VAE: Default (model), Raw prompt: a cat, Raw negative prompt: , "
        'Adaptive CFG: 1.0, Clip skip: 2, Lora hashes: "detail: 2222222222, sdxl_hyper_sd_4step_lora: 1111111111", '
        'Lora weights: "detail: 0.6, sdxl_hyper_sd_4step_lora: 0.8", Version: Fooocus v2.5.5'
    )
    task = restore(text)
    assert task.loras == [LoraSpec(name="sub/detail.safetensors", weight=0.6)]
    assert (task.performance, task.sampler, task.scheduler, task.steps) == ("Hyper-SD", "dpmpp_sde_gpu", "karras", 4)
