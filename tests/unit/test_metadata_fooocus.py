"""Metadata as Fooocus 2.5.5 writes and reads it (§1.11): Fooocus-written files read by Foci, and Foci-written
files read by the rules of Fooocus's own reader (re-stated here from the spec and Fooocus's documented behaviour,
independently of Foci's reader)."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from foci.records.metadata import ImageRecord, task_from_metadata, to_a1111_text, to_fooocus_json
from foci.records.outputs import read_metadata
from foci.task import SAMPLERS, GenerationTask, LoraSpec
from foci.text.prompt_plan import plan_image_prompts
from foci.text.styles import StyleLibrary
from foci.text.wildcards import WildcardLibrary

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


# ------------------------------------------------------------------------ Fooocus's reader, restated
# Fooocus's sampler table (flags.KSAMPLER | SAMPLER_EXTRA): Fooocus name → A1111 label, "" = no label (the
# Fooocus name is written and read as is). Its reader strips " Karras" and takes the first name with the label.
FOOOCUS_A1111_LABELS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "heunpp2": "", "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "", "dpmpp_3m_sde_gpu": "", "ddpm": "", "lcm": "LCM", "tcd": "TCD", "restart": "Restart",
    "ddim": "DDIM", "uni_pc": "UniPC", "uni_pc_bh2": "",
}
# The only A1111 labels Fooocus's reader knows (label → its key); any other key is dropped.
FOOOCUS_A1111_KEYS = {
    "Raw prompt": "raw_prompt", "Raw negative prompt": "raw_negative_prompt", "Negative prompt": "negative_prompt",
    "Styles": "styles", "Performance": "performance", "Steps": "steps", "Sampler": "sampler",
    "Scheduler": "scheduler", "VAE": "vae", "CFG scale": "guidance_scale", "Seed": "seed", "Size": "resolution",
    "Sharpness": "sharpness", "ADM Guidance": "adm_guidance", "Refiner Swap Method": "refiner_swap_method",
    "Adaptive CFG": "adaptive_cfg", "Clip skip": "clip_skip", "Overwrite Switch": "overwrite_switch",
    "FreeU": "freeu", "Model": "base_model", "Model hash": "base_model_hash", "Refiner": "refiner_model",
    "Refiner hash": "refiner_model_hash", "Lora hashes": "lora_hashes", "Lora weights": "lora_weights",
    "User": "created_by", "Version": "version",
}
FOOOCUS_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _with_extension(name: str, files: list[str]) -> str:
    return next((file for file in files if Path(file).stem == name), name)


def fooocus_reads_a1111(text: str) -> dict[str, str]:
    """The parameters Fooocus's a1111 reader takes from ``text`` (before its UI applies them)."""
    *lines, last = text.strip().split("\n")
    if len(FOOOCUS_PARAM.findall(last)) < 3:
        lines, last = [*lines, last], ""
    positive: list[str] = []
    negative: list[str] = []
    for line in (line.strip() for line in lines):
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:"):].strip())
        else:
            (negative if negative else positive).append(line)
    full_prompt = "\n".join(positive)
    data = {"prompt": full_prompt, "negative_prompt": "\n".join(negative)}
    for key, value in FOOOCUS_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        if size:
            data["resolution"] = str((size.group(1), size.group(2)))
        elif key in FOOOCUS_A1111_KEYS:
            data[FOOOCUS_A1111_KEYS[key]] = value
    if "raw_prompt" in data:
        data["prompt"] = data["raw_prompt"]
        # Styles come from un-wrapping the full prompt; "Fooocus V2" whenever it differs from the raw prompt.
        data["expansion_inferred"] = str(full_prompt != data["raw_prompt"].replace("\n", ", "))
    if "raw_negative_prompt" in data:
        data["negative_prompt"] = data["raw_negative_prompt"]
    if "sampler" in data:
        label = data["sampler"].replace(" Karras", "")
        data["sampler"] = next((name for name, known in FOOOCUS_A1111_LABELS.items() if known == label), label)
    for key, files in (("base_model", MODEL_FILES), ("vae", VAE_FILES)):
        if key in data:
            data[key] = _with_extension(data[key], files)
    for index, entry in enumerate(filter(None, data.get("lora_weights", "").split(", ")), start=1):
        name, weight = entry.split(": ")[0], entry.split(": ")[-1]
        if name in [Path(file).stem for file in LORA_FILES]:
            data[f"lora_combined_{index}"] = f"{_with_extension(name, LORA_FILES)} : {weight}"
    return data


def fooocus_reads_json(data: dict[str, object]) -> dict[str, object]:
    """Fooocus's fooocus-scheme reader: model, VAE and lora_combined_N stems become file names (else None)."""
    read = dict(data)
    for key, text in data.items():
        if text in ("", "None") or not isinstance(text, str):
            continue
        if key in ("base_model", "refiner_model", "vae"):
            files = VAE_FILES if key == "vae" else MODEL_FILES
            read[key] = next((file for file in files if Path(file).stem == text), None)
        elif key.startswith("lora_combined_"):
            name, weight = text.split(" : ")
            read[key] = next((f"{file} : {weight}" for file in LORA_FILES if Path(file).stem == name), None)
    return read


def record_for(task: GenerationTask, *, vae: str | None = None, image_index: int = 0) -> ImageRecord:
    """The record the engine makes for one image of ``task`` (prompt items from the real prompt plan)."""
    plan = plan_image_prompts(task.prompt, task.negative_prompt, task.styles, seed=task.seed, image_index=image_index,
                              library=StyleLibrary.load(), wildcards=WildcardLibrary.load(),
                              expand=lambda text, seed: f"{text}, intricate, elegant")
    width, height = task.size
    return ImageRecord(
        task=task, seed=task.seed, width=width, height=height, positive_items=plan.positive,
        negative_items=plan.negative, prompt_expansion=plan.expansion, logged_prompt=plan.log_positive,
        logged_negative_prompt=plan.log_negative, base_model_name=task.base_model, base_model_hash="aeb7e9e689",
        vae_name=vae or task.vae, refiner_model_name=task.refiner_model,
        loras=[(lora.name, lora.weight, "4852686128") for lora in task.loras],
        software="Foci 0.1.0", device="cpu")


def a1111_task(**changes: object) -> GenerationTask:
    fields: dict[str, object] = dict(
        prompt="a red fox in the snow", negative_prompt="blurry", styles=["Fooocus Enhance", "Fooocus Sharp"],
        base_model="juggernautXL_v8Rundiffusion.safetensors", metadata_scheme="a1111", seed=42,
        loras=[LoraSpec(name="sd_xl_offset_example-lora_1.0.safetensors", weight=0.1),
               LoraSpec(name="sub/detail.safetensors", weight=-0.5)],
        refiner_model="juggernautXL_v8Rundiffusion.safetensors", refiner_switch=0.8, vae="sdxl_vae.safetensors")
    fields.update(changes)
    return GenerationTask(**fields)


# --------------------------------------------------------------------- Foci-written a1111 text read by Fooocus
def test_fooocus_reads_loras_sampler_and_models_from_foci_a1111_text() -> None:
    task = a1111_task()
    text = to_a1111_text(record_for(task))
    read = fooocus_reads_a1111(text)
    assert read["lora_combined_1"] == "sd_xl_offset_example-lora_1.0.safetensors : 0.1"
    assert read["lora_combined_2"] == "sub/detail.safetensors : -0.5"
    assert (read["sampler"], read["scheduler"]) == ("dpmpp_2m_sde", "karras")  # Fooocus's own reading of its label
    assert (read["base_model"], read["vae"], read["refiner_model"]) == (
        "juggernautXL_v8Rundiffusion.safetensors", "sdxl_vae.safetensors", "juggernautXL_v8Rundiffusion")
    assert (read["prompt"], read["negative_prompt"], read["expansion_inferred"]) == (
        "a red fox in the snow", "blurry", "True")  # the style-wrapped prompt differs from the raw one
    # Fooocus's a1111 reader has no key for the refiner switch; Foci's own key carries it back to Foci.
    assert "Refiner switch at: 0.8" in text
    assert restore(text) == task


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fooocus_reads_every_foci_sampler_back(sampler: str) -> None:
    task = a1111_task(sampler=sampler, scheduler="karras", refiner_model=None)
    read = fooocus_reads_a1111(to_a1111_text(record_for(task)))
    label = FOOOCUS_A1111_LABELS[sampler]
    # Where two Fooocus samplers share a label, Fooocus reads the first (as it does for its own files).
    expected = next(name for name, known in FOOOCUS_A1111_LABELS.items() if known == label) if label else sampler
    assert read["sampler"] == expected
    assert restore(to_a1111_text(record_for(task))).sampler == sampler


@pytest.mark.parametrize("prompt", ["a cat <lora:sd_xl_offset_example-lora_1.0:0.5>", "a __color__ cat",
                                    "a [[cat,dog]] on a mat\nsecond line"])
def test_fooocus_does_not_invent_fooocus_v2_for_processed_prompts(prompt: str) -> None:
    # Without styles, Fooocus infers "Fooocus V2" when the written prompt differs from the raw prompt, so the raw
    # prompt must be the one Fooocus logs: after wildcards and arrays, without <lora:> tags.
    task = a1111_task(prompt=prompt, styles=[], loras=[])
    text = to_a1111_text(record_for(task, image_index=1))
    read = fooocus_reads_a1111(text)
    assert read["expansion_inferred"] == "False"
    assert "<lora:" not in read["prompt"] and "__" not in read["prompt"] and "[[" not in read["prompt"]
    assert restore(text).prompt == prompt  # Foci keeps the prompt as typed


@pytest.mark.parametrize(("line", "sampler"), [
    ("Sampler: DPM++ 3M SDE Karras, Foci sampler: dpmpp_3m_sde, Scheduler: karras", "dpmpp_3m_sde"),
    ("Sampler: DPM++ 3M SDE Karras, Scheduler: karras", "dpmpp_3m_sde_gpu"),  # earlier Foci versions, A1111
    ("Sampler: dpmpp_3m_sde_gpu, Scheduler: karras", "dpmpp_3m_sde_gpu"),  # Fooocus and Foci now
])
def test_3m_sde_labels_old_and_new_are_read(line: str, sampler: str) -> None:
    task = restore(f"a cat\nSteps: 30, {line}, Seed: 1, Size: 1152x896")
    assert (task.sampler, task.scheduler) == (sampler, "karras")


def test_foci_a1111_text_keeps_fooocus_v2_detectable() -> None:
    task = a1111_task(styles=["Fooocus V2"], loras=[])
    read = fooocus_reads_a1111(to_a1111_text(record_for(task)))
    assert read["expansion_inferred"] == "True"


# ------------------------------------------------------------------------------------ the VAE, both schemes
@pytest.mark.parametrize("vae", ["sdxl_vae.safetensors", "extra/anime_vae.safetensors"])
def test_vae_in_the_fooocus_scheme(vae: str) -> None:
    task = a1111_task(vae=vae, metadata_scheme="fooocus")
    data = json.loads(to_fooocus_json(record_for(task)))
    assert data["vae"] == Path(vae).stem  # Fooocus writes the VAE file's stem
    assert fooocus_reads_json(data)["vae"] == vae
    assert restore(data).vae == vae
    fooocus_written = dict(FOOOCUS_LIGHTNING, vae=Path(vae).stem)
    assert restore(fooocus_written).vae == vae


def test_default_vae_in_both_schemes() -> None:
    task = a1111_task(vae=None, metadata_scheme="fooocus")
    data = json.loads(to_fooocus_json(record_for(task)))
    assert data["vae"] == "Default (model)" and restore(data).vae is None
    assert "VAE: Default (model)" in to_a1111_text(record_for(task))
