"""Metadata writers (fooocus JSON, A1111 text) and their inverse, task_from_metadata."""

from __future__ import annotations

import json

import pytest

from foci.records.metadata import (
    ImageRecord,
    MetadataError,
    a1111_sampler_label,
    extract_styles_from_prompt,
    task_from_metadata,
    to_a1111_text,
    to_fooocus_json,
    version_label,
)
from foci.task import SAMPLERS, FreeUSettings, GenerationTask, LoraSpec
from foci.text.prompt_plan import plan_image_prompts
from foci.text.styles import Style, StyleLibrary
from foci.text.wildcards import WildcardLibrary

MODEL_FILES = ["juggernautXL_v8Rundiffusion.safetensors", "sd_xl_refiner_1.0.safetensors"]
LORA_FILES = ["offset.safetensors", "sub/detail.safetensors"]
VAE_FILES = ["sdxl_vae.safetensors"]


def rich_task(**changes: object) -> GenerationTask:
    """A task with a non-default value in every field that metadata carries."""
    fields: dict[str, object] = dict(
        prompt='a "red" fox: snow, café ☕\nsecond line',
        negative_prompt="blurry, lowres",
        styles=["Fooocus V2", "Fooocus Masterpiece", "Artist's Mood"],
        performance="Quality",
        aspect_ratio="896*1152",
        seed=123456789012,
        steps=42,
        guidance_scale=6.5,
        sharpness=3.25,
        sampler="dpmpp_2m_sde",
        scheduler="exponential",
        clip_skip=1,
        adaptive_cfg=5.5,
        adm_scaler_positive=1.25,
        adm_scaler_negative=0.75,
        adm_scaler_end=0.4,
        freeu=FreeUSettings(enabled=True, b1=1.1, b2=1.2, s1=0.9, s2=0.8),
        sag_scale=0.5,
        perp_neg_scale=1.0,
        base_model="juggernautXL_v8Rundiffusion.safetensors",
        refiner_model="sd_xl_refiner_1.0.safetensors",
        refiner_switch=0.75,
        refiner_swap_method="separate",
        vae="sdxl_vae.safetensors",
        loras=[
            LoraSpec(name="offset.safetensors", weight=0.35),
            LoraSpec(name="sub/detail.safetensors", weight=-0.5),
        ],
        overwrite_switch=20,
        precision="fp32",
    )
    fields.update(changes)
    return GenerationTask(**fields)


def make_record(task: GenerationTask) -> ImageRecord:
    """The record a pipeline would produce for the task's first image."""
    width, height = task.size
    return ImageRecord(
        task=task,
        seed=task.seed,
        width=width,
        height=height,
        positive_items=[task.prompt, "masterpiece, best quality"],
        negative_items=[task.negative_prompt, "worst quality"],
        prompt_expansion="a red fox, snow, intricate",
        base_model_name=task.base_model,
        base_model_hash="0123456789",
        refiner_model_name=task.refiner_model,
        refiner_model_hash="abcdefabcd" if task.refiner_model else "",
        vae_name=task.vae,
        loras=[
            (lora.name, lora.weight, f"{index}" * 10) for index, lora in enumerate(task.loras) if lora.enabled
        ],
        software="Foci 0.1.0",
        device="torch 2.13.0+cpu, cpu, bfloat16",
    )


def restore(payload: str | dict, scheme: str | None = None) -> GenerationTask:
    return task_from_metadata(
        payload, scheme, model_files=MODEL_FILES, lora_files=LORA_FILES, vae_files=VAE_FILES
    )


def fixed_record() -> ImageRecord:
    task = GenerationTask(
        prompt="a red fox, snow",
        negative_prompt="blurry",
        styles=["Fooocus V2", "Fooocus Sharp"],
        seed=1,
        base_model="juggernautXL_v8Rundiffusion.safetensors",
        loras=[LoraSpec(name="sd_xl_offset_example-lora_1.0.safetensors", weight=0.1)],
    )
    return ImageRecord(
        task=task,
        seed=1,
        width=1152,
        height=896,
        positive_items=["a red fox, snow", "cinematic still"],
        negative_items=["blurry", "anime, cartoon"],
        prompt_expansion="a red fox, snow, intricate",
        base_model_name=task.base_model,
        base_model_hash="e6bb9ea85b",
        loras=[("sd_xl_offset_example-lora_1.0.safetensors", 0.1, "4852686128")],
        software="Foci 0.1.0",
        device="torch 2.13.0+cpu, cpu, bfloat16",
    )


GOLDEN_A1111 = (
    "a red fox, snow, cinematic still\n"
    "Negative prompt: blurry, anime, cartoon\n"
    'Steps: 30, Sampler: DPM++ 2M SDE Karras, Seed: 1, Size: 1152x896, CFG scale: 4.0, Sharpness: 2.0, '
    'ADM Guidance: "(1.5, 0.8, 0.3)", Model: juggernautXL_v8Rundiffusion, Model hash: e6bb9ea85b, '
    'Performance: Speed, Scheduler: karras, VAE: Default (model), Raw prompt: "a red fox, snow", '
    "Raw negative prompt: blurry, Styles: \"['Fooocus V2', 'Fooocus Sharp']\", Clip skip: 2, "
    'Lora hashes: "sd_xl_offset_example-lora_1.0: 4852686128", '
    'Lora weights: "sd_xl_offset_example-lora_1.0: 0.1", Version: Foci v0.1.0'
)

GOLDEN_FOOOCUS = {
    "adm_guidance": "(1.5, 0.8, 0.3)",
    "base_model": "juggernautXL_v8Rundiffusion",
    "base_model_hash": "e6bb9ea85b",
    "clip_skip": 2,
    "device": "torch 2.13.0+cpu, cpu, bfloat16",
    "full_negative_prompt": ["blurry", "anime, cartoon"],
    "full_prompt": ["a red fox, snow", "cinematic still"],
    "guidance_scale": 4.0,
    "lora_combined_1": "sd_xl_offset_example-lora_1.0 : 0.1",
    "loras": [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"]],
    "metadata_scheme": "fooocus",
    "negative_prompt": "blurry",
    "performance": "Speed",
    "precision": "auto",
    "prompt": "a red fox, snow",
    "prompt_expansion": "a red fox, snow, intricate",
    "refiner_model": "None",
    "refiner_switch": 0.5,
    "resolution": "(1152, 896)",
    "sampler": "dpmpp_2m_sde_gpu",
    "scheduler": "karras",
    "seed": "1",
    "sharpness": 2.0,
    "software": "Foci 0.1.0",
    "steps": 30,
    "styles": "['Fooocus V2', 'Fooocus Sharp']",
    "vae": "Default (model)",
    "version": "Foci v0.1.0",
}


def test_a1111_golden_line() -> None:
    assert to_a1111_text(fixed_record()) == GOLDEN_A1111


def test_fooocus_json_golden() -> None:
    text = to_fooocus_json(fixed_record())
    assert json.loads(text) == GOLDEN_FOOOCUS
    assert text == json.dumps(GOLDEN_FOOOCUS, sort_keys=True)
    assert text.startswith('{"adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion",')


def test_rich_record_optional_keys() -> None:
    record = make_record(rich_task())
    data = json.loads(to_fooocus_json(record))
    assert data["refiner_model"] == "sd_xl_refiner_1.0"
    assert data["refiner_model_hash"] == "abcdefabcd"
    assert data["refiner_swap_method"] == "separate"
    assert data["overwrite_switch"] == 20
    assert data["adaptive_cfg"] == 5.5
    assert data["freeu"] == "(1.1, 1.2, 0.9, 0.8)"
    assert data["vae"] == "sdxl_vae"
    assert data["loras"] == [["offset", 0.35, "0000000000"], ["detail", -0.5, "1111111111"]]
    assert data["lora_combined_2"] == "detail : -0.5"
    assert data["steps"] == 42 and data["seed"] == "123456789012" and data["resolution"] == "(896, 1152)"
    assert "clip_skip" not in data  # Fooocus writes it only when > 1

    text = to_a1111_text(record)
    line = text.split("\n")[-1]
    assert line.startswith("Steps: 42, Sampler: DPM++ 2M SDE, Foci sampler: dpmpp_2m_sde, Seed: 123456789012")
    assert "Refiner: sd_xl_refiner_1.0, Refiner hash: abcdefabcd, Refiner switch at: 0.75, " in line
    assert "Adaptive CFG: 5.5, Overwrite Switch: 20, Refiner Swap Method: separate, " in line
    assert 'FreeU: "(1.1, 1.2, 0.9, 0.8)", SAG scale' in line
    assert "SAG scale: 0.5, Perp-Neg scale: 1.0, Precision: fp32, " in line
    assert 'Raw prompt: "a \\"red\\" fox: snow, café ☕\\nsecond line"' in line
    assert "Clip skip" not in line


@pytest.mark.parametrize("scheme", ["fooocus", "a1111"])
def test_round_trip_restores_every_carried_field(scheme: str) -> None:
    original = rich_task(metadata_scheme=scheme)
    record = make_record(original)
    payload = to_fooocus_json(record) if scheme == "fooocus" else to_a1111_text(record)
    restored = restore(payload)  # scheme inferred from the payload
    assert restored.model_dump() == original.model_dump()
    assert restore(payload, scheme) == original


def test_round_trip_of_a_default_task() -> None:
    original = GenerationTask(prompt="cat", base_model="juggernautXL_v8Rundiffusion.safetensors")
    record = make_record(original)
    assert restore(to_fooocus_json(record)) == original
    assert restore(to_a1111_text(record)) == original.model_copy(update={"metadata_scheme": "a1111"})


def test_fooocus_dict_payload_and_stems_without_file_lists() -> None:
    data = json.loads(to_fooocus_json(make_record(rich_task())))
    task = task_from_metadata(data)
    assert task.base_model == "juggernautXL_v8Rundiffusion"
    assert task.refiner_model == "sd_xl_refiner_1.0"
    assert task.vae == "sdxl_vae"
    assert [(lora.name, lora.weight) for lora in task.loras] == [("offset", 0.35), ("detail", -0.5)]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("scheduler", ["karras", "normal"])
def test_every_sampler_survives_a1111(sampler: str, scheduler: str) -> None:
    original = GenerationTask(sampler=sampler, scheduler=scheduler, metadata_scheme="a1111", clip_skip=2)
    assert restore(to_a1111_text(make_record(original))) == original


def test_a1111_sampler_names() -> None:
    assert a1111_sampler_label("dpmpp_2m_sde_gpu", "karras") == "DPM++ 2M SDE Karras"
    assert a1111_sampler_label("euler_ancestral", "karras") == "Euler a"
    assert a1111_sampler_label("dpmpp_2m", "normal") == "DPM++ 2M"
    assert a1111_sampler_label("dpm_2_ancestral", "karras") == "DPM2 a Karras"
    assert a1111_sampler_label("heunpp2", "karras") == "heunpp2"
    assert version_label("Foci 0.1.0") == "Foci v0.1.0"
    assert version_label("custom") == "custom"


def test_reads_plain_automatic1111_text() -> None:
    text = (
        "a cat, (detailed:1.2)\nsecond line\nNegative prompt: ugly\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x768, "
        "Model hash: abc, Model: sd15, Version: v1.6.0"
    )
    task = task_from_metadata(text)
    assert (task.prompt, task.negative_prompt) == ("a cat, (detailed:1.2)\nsecond line", "ugly")
    assert (task.sampler, task.scheduler, task.clip_skip) == ("dpmpp_2m", "karras", 1)
    assert (task.steps, task.guidance_scale, task.seed, task.aspect_ratio) == (20, 7.0, 5, "512*768")
    assert task.base_model == "sd15" and task.metadata_scheme == "a1111"
    newer = task_from_metadata("x\nSteps: 9, Sampler: Euler, Schedule type: Exponential, Clip skip: 2")
    assert (newer.sampler, newer.scheduler, newer.clip_skip, newer.steps) == ("euler", "exponential", 2, 9)


def test_unknown_keys_ignored_and_partial_json_keeps_defaults() -> None:
    task = task_from_metadata({"prompt": "dog", "wibble": [1, 2], "steps": "12"})
    assert (task.prompt, task.steps, task.clip_skip, task.sampler) == ("dog", 12, 2, "dpmpp_2m_sde_gpu")
    assert task_from_metadata('{"prompt": "dog"}').prompt == "dog"


@pytest.mark.parametrize(
    ("payload", "scheme", "needle"),
    [
        ('{"prompt": "a", "steps": 3', None, "not valid JSON"),
        ("not json at all", "fooocus", "not valid JSON"),
        ("[1, 2]", "fooocus", "JSON object"),
        ({"steps": "many"}, None, "'steps'"),
        ({"steps": True}, None, "'steps'"),
        ({"steps": 500}, None, "'steps'"),
        ({"guidance_scale": [4]}, None, "'guidance_scale'"),
        ({"guidance_scale": 99}, None, "'guidance_scale'"),
        ({"prompt": 5}, None, "'prompt'"),
        ({"styles": 5}, None, "'styles'"),
        ({"styles": "['a', "}, None, "'styles'"),
        ({"resolution": "(10, 10)"}, None, "'resolution'"),
        ({"resolution": "huge"}, None, "'resolution'"),
        ({"adm_guidance": "(1.5, 0.8)"}, None, "'adm_guidance'"),
        ({"sampler": "warp_drive"}, None, "'sampler'"),
        ({"seed": "-3"}, None, "'seed'"),
        ({"loras": [[1, 2]]}, None, "'loras'"),
        ({"loras": "offset"}, None, "'loras'"),
        ({"lora_combined_1": "offset 0.5"}, None, "'lora_combined_1'"),
        ({"freeu": "(1, 2)"}, None, "'freeu'"),
        ("a cat\nNegative prompt: ugly", None, "Steps"),
        ("", None, "Steps"),
        ("\x00\x01\x02 garbage ][", None, "Steps"),
        ("cat\nSteps: abc, Sampler: Euler", None, "'Steps'"),
        ("cat\nSteps: 20, Sampler: Warp Drive", None, "'Sampler'"),
        ("cat\nSteps: 20, CFG scale: hot", None, "'CFG scale'"),
        ("cat\nSteps: 20, CFG scale: 90", None, "'CFG scale'"),
        ("cat\nSteps: 20, Size: big", None, "'Size'"),
        ("cat\nSteps: 20, Scheduler: wobbly", None, "'Scheduler'"),
        ("cat\nSteps: 20, Lora weights: \"offset\"", None, "'Lora weights'"),
        ({"prompt": "a"}, "a1111", "must be text"),
        ("cat\nSteps: 20", "exif", "unknown metadata scheme"),
    ],
)
def test_malformed_payloads_raise_value_error(payload: str | dict, scheme: str | None, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as caught:
        task_from_metadata(payload, scheme)
    assert isinstance(caught.value, MetadataError)


# ------------------------------------------------------------------------------------- styles from the prompt
def _written(styles: list[str], prompt: str = "a cat", negative: str = "", expansion: bool = False) -> tuple[str, str]:
    """The positive and negative texts an a1111 record carries for ``prompt`` with ``styles`` applied."""
    plan = plan_image_prompts(prompt, negative, styles, seed=1, image_index=0, library=LIBRARY,
                              wildcards=WildcardLibrary({}),
                              expand=(lambda text, seed: f"{text}, intricate, elegant, highly detailed")
                              if expansion else None)
    return ", ".join(plan.positive), ", ".join(plan.negative)


def _plain_a1111(positive: str, negative: str, extra: str = "") -> str:
    """A record as Fooocus/AUTOMATIC1111 write it: no ``Styles`` key."""
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{positive}{negative_line}\nSteps: 30, Sampler: DPM++ 2M SDE Karras, Seed: 7, Size: 1152x896{extra}"


LIBRARY = StyleLibrary.load()


def test_two_styles_are_unwrapped_from_a_prompt() -> None:
    styles = ["Fooocus Sharp", "Film Noir"]
    positive, negative = _written(styles)
    assert positive.startswith("cinematic film still of a cat, ") and "film noir frame, a cat, " in positive
    assert extract_styles_from_prompt(positive, negative, LIBRARY) == (styles, "a cat", "")
    task = task_from_metadata(_plain_a1111(positive, negative))
    assert (task.styles, task.prompt, task.negative_prompt) == (styles, "a cat", "")


def test_no_style_leaves_the_prompt_unchanged() -> None:
    positive, negative = "a cat, sitting on a mat, a cat, (detailed:1.2)", "ugly, blurry"
    assert extract_styles_from_prompt(positive, negative, LIBRARY) == ([], positive, negative)
    task = task_from_metadata(_plain_a1111(positive, negative))
    assert (task.styles, task.prompt, task.negative_prompt) == ([], positive, negative)
    assert task_from_metadata("a dog\nSteps: 20").styles == []  # no default styles sneak in


def test_negative_only_styles_and_the_user_negative_keep_their_order() -> None:
    styles = ["Fooocus Enhance", "Fooocus Masterpiece", "Fooocus Negative", "Neo Noir"]
    positive, negative = _written(styles, "a red fox, snow", "ugly\nsecond negative")
    found, prompt, real_negative = extract_styles_from_prompt(positive, negative, LIBRARY)
    assert (found, prompt, real_negative) == (styles, "a red fox, snow", "ugly, second negative")


def test_fooocus_v2_expansion_is_detected() -> None:
    # With a style wrapping the prompt, the trailing "<prompt>, words…" item is the expansion.
    positive, negative = _written(["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"], "a cat", "ugly",
                                  expansion=True)
    assert positive.endswith(", a cat, intricate, elegant, highly detailed")
    assert extract_styles_from_prompt(positive, negative, LIBRARY) == (
        ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"], "a cat", "ugly")
    # Without a wrapping style, only the raw prompt (Fooocus writes it) or the expansion itself tells.
    positive, negative = _written(["Fooocus V2", "Fooocus Enhance"], "a cat", "ugly", expansion=True)
    assert extract_styles_from_prompt(positive, negative, LIBRARY)[0] == ["Fooocus Enhance"]
    assert extract_styles_from_prompt(positive, negative, LIBRARY, raw_prompt="a cat") == (
        ["Fooocus V2", "Fooocus Enhance"], "a cat", "ugly")
    assert extract_styles_from_prompt(positive, negative, LIBRARY,
                                      expansion="a cat, intricate, elegant, highly detailed") == (
        ["Fooocus V2", "Fooocus Enhance"], "a cat", "ugly")
    text = _plain_a1111(positive, negative, ', Raw prompt: a cat, Raw negative prompt: "ugly"')
    task = task_from_metadata(text)
    assert (task.styles, task.prompt, task.negative_prompt) == (["Fooocus V2", "Fooocus Enhance"], "a cat", "ugly")


def test_extra_lines_and_a_trailing_placeholder_style() -> None:
    styles = ["Fooocus V2", "Fooocus Pony", "Fooocus Sharp"]
    positive, negative = _written(styles, "a cat, sitting\nsecond line", "ugly", expansion=True)
    assert extract_styles_from_prompt(positive, negative, LIBRARY) == (styles, "a cat, sitting\nsecond line",
                                                                       "ugly")


def test_user_styles_and_a_style_without_placeholder() -> None:
    library = StyleLibrary([Style("Tagged", "best quality, 8k", "worst quality"),
                            Style("Wrap", "(({prompt}))", "")])
    assert extract_styles_from_prompt("a cat, best quality, 8k", "worst quality, ugly", library) == (
        ["Tagged"], "a cat", "ugly")
    assert extract_styles_from_prompt("((a cat)), best quality, 8k", "worst quality", library) == (
        ["Wrap", "Tagged"], "a cat", "")
    # The library decides: a style the library lacks is left in the prompt.
    task = task_from_metadata(_plain_a1111("((a cat))", ""), style_library=StyleLibrary())
    assert (task.styles, task.prompt) == ([], "((a cat))")
