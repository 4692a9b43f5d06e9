"""Config precedence, validation fallbacks, env parsing and the shipped presets (§1.12, §1.13)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from foci.settings.aspect_ratios import SDXL_ASPECT_RATIOS
from foci.settings.config import (
    ConfigError,
    FociSettings,
    LoraDefault,
    available_presets,
    load_settings,
)
from foci.task import SAMPLERS, SCHEDULERS, GenerationTask, LoraSpec

SHIPPED = ["anime", "default", "lcm", "lightning", "playground_v2.5", "pony_v6", "realistic", "sai"]
HF = "https://huggingface.co"


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load(root: Path, **kwargs: Any) -> tuple[FociSettings, list[str]]:
    kwargs.setdefault("environ", {})
    return load_settings(root=root, **kwargs)


# --- precedence ------------------------------------------------------------------------------------------------


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """A root with a user default preset, a config file and a user preset 'mine', each setting fewer keys."""
    write_json(tmp_path / "presets" / "default.json", {
        "default_model": "from_default.safetensors", "default_cfg_scale": 8.5, "default_sample_sharpness": 8.0,
        "default_clip_skip": 4, "default_cfg_tsnr": 8.0})
    write_json(tmp_path / "config.json", {
        "default_cfg_scale": 7.5, "default_sample_sharpness": 7.0, "default_clip_skip": 3})
    write_json(tmp_path / "presets" / "mine.json", {"default_cfg_scale": 6.5, "default_sample_sharpness": 6.0})
    return tmp_path


def test_precedence_key_by_key(layered: Path) -> None:
    settings, warnings = load(layered, preset="mine", environ={"default_cfg_scale": "5.5"})
    assert warnings == []
    assert settings.default_cfg_scale == 5.5          # environment
    assert settings.default_sample_sharpness == 6.0   # preset
    assert settings.default_clip_skip == 3            # config file
    assert settings.default_cfg_tsnr == 8.0           # presets/default.json
    assert settings.default_model == "from_default.safetensors"
    assert settings.default_overwrite_switch == -1    # built-in fallback
    assert settings.default_refiner_switch == 0.8     # built-in fallback (the user default.json replaces shipped)


def test_precedence_each_level_removed(layered: Path) -> None:
    assert load(layered, preset="mine")[0].default_cfg_scale == 6.5
    assert load(layered)[0].default_cfg_scale == 7.5
    (layered / "config.json").unlink()
    assert load(layered)[0].default_cfg_scale == 8.5
    (layered / "presets" / "default.json").unlink()
    settings, warnings = load(layered)  # shipped default.json now
    assert (settings.default_cfg_scale, settings.default_refiner_switch, warnings) == (4.0, 0.5, [])


def test_shipped_default_effective_values(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path)
    assert warnings == []
    assert settings.default_model == "juggernautXL_v8Rundiffusion.safetensors"
    assert settings.default_loras[0] == LoraDefault(True, "sd_xl_offset_example-lora_1.0.safetensors", 0.1)
    assert (settings.default_cfg_scale, settings.default_sample_sharpness) == (4.0, 2.0)
    assert (settings.default_sampler, settings.default_scheduler) == ("dpmpp_2m_sde_gpu", "karras")
    assert settings.default_styles == ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"]
    assert (settings.default_aspect_ratio, settings.default_performance) == ("1152*896", "Speed")
    assert (settings.default_image_number, settings.default_max_image_number) == (2, 32)
    assert settings.default_max_lora_number == 5
    assert settings.available_aspect_ratios == list(SDXL_ASPECT_RATIOS)


def test_config_path_from_env_and_argument(tmp_path: Path) -> None:
    other = write_json(tmp_path / "elsewhere" / "my.json", {"default_cfg_scale": 3.25})
    write_json(tmp_path / "config.json", {"default_cfg_scale": 9.0})
    assert load(tmp_path)[0].default_cfg_scale == 9.0
    assert load(tmp_path, environ={"FOCI_CONFIG": str(other)})[0].default_cfg_scale == 3.25
    assert load(tmp_path, config_path=other, environ={"FOCI_CONFIG": "/nope.json"})[0].default_cfg_scale == 3.25


def test_user_preset_overrides_shipped(tmp_path: Path) -> None:
    write_json(tmp_path / "presets" / "anime.json", {"default_cfg_scale": 11.0})
    settings, _ = load(tmp_path, preset="anime")
    assert settings.default_cfg_scale == 11.0
    assert settings.default_model == "juggernautXL_v8Rundiffusion.safetensors"  # not the shipped anime model
    assert available_presets(tmp_path) == SHIPPED
    write_json(tmp_path / "presets" / "extra.json", {})
    assert available_presets(tmp_path) == sorted([*SHIPPED, "extra"])


def test_preset_by_path(tmp_path: Path) -> None:
    path = write_json(tmp_path / "x" / "custom.json", {"default_prompt": "a cat"})
    assert load(tmp_path, preset=str(path))[0].default_prompt == "a cat"


# --- errors and warnings ---------------------------------------------------------------------------------------


def test_unknown_preset_lists_available(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'; available: anime, default, lcm, .*sai"):
        load(tmp_path, preset="nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        load(tmp_path, preset="../default")


@pytest.mark.parametrize("text, message", [("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object")])
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load(tmp_path)


def test_bad_preset_file(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json is not valid JSON"):
        load(tmp_path, preset="broken")


def test_missing_explicit_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path, config_path=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path, environ={"FOCI_CONFIG": str(tmp_path / "missing.json")})


def test_invalid_values_fall_back_with_warning(layered: Path) -> None:
    write_json(layered / "presets" / "mine.json", {
        "default_sampler": "bogus", "default_cfg_scale": "high", "default_scheduler": "karras"})
    write_json(layered / "config.json", {
        "default_sampler": "euler", "default_cfg_scale": 50, "default_scheduler": 3,
        "default_image_number": 40, "default_loras": [["only-a-name"]], "default_performance": "Turbo"})
    settings, warnings = load(layered, preset="mine", environ={"default_clip_skip": "many"})
    assert settings.default_sampler == "euler"        # preset invalid -> config
    assert settings.default_cfg_scale == 8.5          # preset and config invalid -> default.json
    assert settings.default_scheduler == "karras"
    assert settings.default_clip_skip == 4            # env invalid -> default.json
    assert settings.default_image_number == 2         # above the max -> fallback
    assert settings.default_performance == "Speed"
    assert settings.default_loras == [LoraDefault(True, "None", 1.0)] * 5
    text = "\n".join(warnings)
    assert len(warnings) == 7, text
    for expected in ("'default_sampler': ignoring 'bogus' from preset 'mine'",
                     "'default_cfg_scale': ignoring 'high' from preset 'mine'",
                     "'default_cfg_scale': ignoring 50 from config file",
                     "'default_clip_skip': ignoring 'many' from environment variable default_clip_skip",
                     "'default_image_number': ignoring 40 from config file",
                     "'default_loras': ignoring [['only-a-name']] from config file",
                     "'default_performance': ignoring 'Turbo' from config file"):
        assert expected in text


def test_aspect_ratio_must_be_available(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"available_aspect_ratios": ["1024x1024", "1216*832"],
                                          "default_aspect_ratio": "640*640"})
    settings, warnings = load(tmp_path)
    assert settings.available_aspect_ratios == ["1024*1024", "1216*832"]
    assert settings.default_aspect_ratio == "1024*1024"  # config and default.json (1152*896) rejected
    assert len(warnings) == 2 and all("default_aspect_ratio" in warning for warning in warnings)
    assert "'640*640' from config file" in warnings[0]
    assert "'1152*896' from preset 'default'" in warnings[1]


def test_bad_aspect_ratio_list(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"available_aspect_ratios": ["1000*1001"]})
    settings, warnings = load(tmp_path)
    assert settings.available_aspect_ratios == list(SDXL_ASPECT_RATIOS)
    assert "available_aspect_ratios" in warnings[0] and "multiple of 8" in warnings[0]


def test_unknown_keys_warn_known_fooocus_keys_do_not(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"default_cfg_scael": 3.0, "default_uov_method": "Disabled",
                                          "default_ip_weight_2": 0.5})
    _, warnings = load(tmp_path)
    assert len(warnings) == 1 and "unknown config key 'default_cfg_scael'" in warnings[0]


def test_known_styles_validation(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"default_styles": ["Fooocus V2", "No Such Style"]})
    known = {"Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"}
    settings, warnings = load(tmp_path, known_styles=known)
    assert settings.default_styles == ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"]
    assert "unknown style(s): No Such Style" in warnings[0]
    assert load(tmp_path)[0].default_styles == ["Fooocus V2", "No Such Style"]


# --- environment parsing -----------------------------------------------------------------------------------------


def test_env_literal_parsing(tmp_path: Path) -> None:
    environ = {
        "path_checkpoints": "['ckpt', '/abs/ckpt2']",
        "path_loras": "my_loras",
        "default_cfg_scale": "5",
        "default_refiner_switch": "0.25",
        "default_save_metadata_to_images": "False",
        "default_black_out_nsfw": "true",
        "default_styles": "['Fooocus V2']",
        "default_model": "123",
        "default_refiner": "None",
        "default_prompt": "'quoted prompt'",
        "default_prompt_negative": "blurry, ugly",
        "default_loras": "[['a.safetensors', 0.5], [False, 'b.safetensors', -1]]",
        "checkpoint_downloads": f"{{'m.safetensors': '{HF}/o/r/resolve/main/m.safetensors'}}",
        "default_max_image_number": "4",
        "default_image_number": "3",
    }
    settings, warnings = load(tmp_path, environ=environ)
    assert warnings == []
    assert settings.path_checkpoints == [tmp_path.resolve() / "ckpt", Path("/abs/ckpt2")]
    assert settings.path_loras == [tmp_path.resolve() / "my_loras"]
    assert settings.default_cfg_scale == 5.0 and isinstance(settings.default_cfg_scale, float)
    assert settings.default_refiner_switch == 0.25
    assert settings.default_save_metadata_to_images is False
    assert settings.default_black_out_nsfw is True
    assert settings.default_styles == ["Fooocus V2"]
    assert settings.default_model == "123"
    assert settings.default_refiner is None
    assert settings.default_prompt == "quoted prompt"
    assert settings.default_prompt_negative == "blurry, ugly"
    assert settings.default_loras == [LoraDefault(True, "a.safetensors", 0.5), LoraDefault(False, "b.safetensors", -1)]
    assert settings.default_max_lora_number == 2  # fallback: len(default_loras)
    assert settings.checkpoint_downloads == {"m.safetensors": f"{HF}/o/r/resolve/main/m.safetensors"}
    assert (settings.default_max_image_number, settings.default_image_number) == (4, 3)


def test_env_download_names_must_be_plain(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path, environ={
        "lora_downloads": f"{{'../evil.safetensors': '{HF}/x'}}", "vae_downloads": "{'v.safetensors': 'ftp://x'}"})
    assert settings.lora_downloads == {"sd_xl_offset_example-lora_1.0.safetensors":
                                       f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                                       "sd_xl_offset_example-lora_1.0.safetensors"}
    assert settings.vae_downloads == {}
    assert len(warnings) == 2 and "plain file name" in warnings[0] and "http" in warnings[1]


def test_relative_paths_resolve_against_root(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"path_outputs": "out", "path_vae": "/abs/vae", "path_loras": ["l1", "l2"]})
    settings, _ = load(tmp_path)
    root = tmp_path.resolve()
    assert settings.path_outputs == root / "out"
    assert settings.path_vae == Path("/abs/vae")
    assert settings.path_loras == [root / "l1", root / "l2"]
    assert settings.path_checkpoints == [root / "models" / "checkpoints"]
    assert settings.path_fooocus_expansion == root / "models" / "prompt_expansion" / "fooocus_expansion"


# --- settings object ---------------------------------------------------------------------------------------------


def test_direct_construction_validates() -> None:
    FociSettings()
    with pytest.raises(ValidationError):
        FociSettings(default_sampler="bogus")
    with pytest.raises(ValidationError):
        FociSettings(default_aspect_ratio="640*640")
    with pytest.raises(ValidationError):
        FociSettings(default_image_number=33)
    with pytest.raises(ValidationError):
        FociSettings(not_a_key=1)


def test_lora_slots_and_task_defaults(tmp_path: Path) -> None:
    settings = FociSettings(default_loras=[["x.safetensors", 0.3], [False, "y.safetensors", 0.2]],
                            default_max_lora_number=3, default_vae="Default (model)", default_refiner="None")
    assert settings.lora_slots() == [LoraDefault(True, "x.safetensors", 0.3), LoraDefault(False, "y.safetensors", 0.2),
                                     LoraDefault(True, "None", 1.0)]
    defaults = settings.task_defaults()
    assert defaults["loras"] == [LoraSpec(name="x.safetensors", weight=0.3),
                                 LoraSpec(name="y.safetensors", weight=0.2, enabled=False)]
    assert (defaults["vae"], defaults["refiner_model"]) == (None, None)
    assert "steps" not in defaults  # the performance mode decides
    GenerationTask(**defaults)


def test_previous_default_models(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    settings = FociSettings(path_checkpoints=[folder], default_model="new.safetensors",
                            previous_default_models=["older.safetensors", "old.safetensors"])
    assert settings.effective_default_model() == "new.safetensors"  # nothing present: download the new one
    (folder / "old.safetensors").write_bytes(b"")
    assert settings.effective_default_model() == "old.safetensors"
    assert settings.task_defaults()["base_model"] == "old.safetensors"
    assert settings.effective_default_model(prefer_previous=False) == "new.safetensors"
    (folder / "new.safetensors").write_bytes(b"")
    assert settings.effective_default_model() == "new.safetensors"


# --- shipped presets (§1.12) ---------------------------------------------------------------------------------------

JUGGERNAUT = "juggernautXL_v8Rundiffusion.safetensors"
JUGGERNAUT_PREVIOUS = ["juggernautXL_version8Rundiffusion.safetensors", "juggernautXL_version7Rundiffusion.safetensors",
                       "juggernautXL_v7Rundiffusion.safetensors", "juggernautXL_version6Rundiffusion.safetensors",
                       "juggernautXL_v6Rundiffusion.safetensors"]
OFFSET = "sd_xl_offset_example-lora_1.0.safetensors"
V2_ENHANCE_SHARP = ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"]
PRESETS: dict[str, dict[str, Any]] = {
    # model, refiner, switch, first LoRA, cfg, sampler, scheduler, performance, styles, aspect
    "default": dict(model=JUGGERNAUT, refiner=None, switch=0.5, lora=(OFFSET, 0.1), cfg=4.0,
                    sampler="dpmpp_2m_sde_gpu", scheduler="karras", performance="Speed", styles=V2_ENHANCE_SHARP,
                    aspect="1152*896", previous=JUGGERNAUT_PREVIOUS),
    "anime": dict(model="animaPencilXL_v500.safetensors", refiner=None, switch=0.5, lora=None, cfg=6.0,
                  sampler="dpmpp_2m_sde_gpu", scheduler="karras", performance="Speed",
                  styles=["Fooocus V2", "Fooocus Semi Realistic", "Fooocus Masterpiece"], aspect="896*1152",
                  previous=[f"animaPencilXL_v{v}.safetensors" for v in ("400", "310", "300", "260", "210", "200",
                                                                          "100")]),
    "realistic": dict(model="realisticStockPhoto_v20.safetensors", refiner=None, switch=0.5,
                      lora=("SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors", 0.25), cfg=3.0, sampler="dpmpp_2m_sde_gpu",
                      scheduler="karras", performance="Speed",
                      styles=["Fooocus V2", "Fooocus Photograph", "Fooocus Negative"], aspect="896*1152",
                      previous=["realisticStockPhoto_v10.safetensors"]),
    "lcm": dict(model=JUGGERNAUT, refiner=None, switch=0.5, lora=None, cfg=4.0, sampler="dpmpp_2m_sde_gpu",
                scheduler="karras", performance="Extreme Speed", styles=V2_ENHANCE_SHARP, aspect="1152*896",
                previous=JUGGERNAUT_PREVIOUS),
    "lightning": dict(model=JUGGERNAUT, refiner=None, switch=0.5, lora=None, cfg=4.0, sampler="dpmpp_2m_sde_gpu",
                      scheduler="karras", performance="Lightning", styles=V2_ENHANCE_SHARP, aspect="1152*896",
                      previous=JUGGERNAUT_PREVIOUS),
    "playground_v2.5": dict(model="playground-v2.5-1024px-aesthetic.fp16.safetensors", refiner=None, switch=0.5,
                            lora=None, cfg=2.0, sampler="dpmpp_2m", scheduler="edm_playground_v2.5",
                            performance="Speed", styles=["Fooocus V2"], aspect="1024*1024", previous=[]),
    "pony_v6": dict(model="ponyDiffusionV6XL.safetensors", refiner=None, switch=0.5, lora=None, cfg=7.0,
                    sampler="dpmpp_2m_sde_gpu", scheduler="karras", performance="Speed", styles=["Fooocus Pony"],
                    # pony_v6.json has no previous_default_models: default.json's list shows through, as in Fooocus
                    aspect="896*1152", previous=JUGGERNAUT_PREVIOUS),
    "sai": dict(model="sd_xl_base_1.0_0.9vae.safetensors", refiner="sd_xl_refiner_1.0_0.9vae.safetensors",
                switch=0.75, lora=(OFFSET, 0.5), cfg=7.0, sampler="dpmpp_2m_sde_gpu", scheduler="karras",
                performance="Speed", styles=["Fooocus V2", "Fooocus Cinematic"], aspect="1152*896", previous=[]),
}


def known_style_names() -> set[str] | None:
    """Names from the lead's style library when it exists, else None (style assertion skipped)."""
    if importlib.util.find_spec("foci.text.styles") is None:
        return None
    from foci.text.styles import StyleLibrary

    return set(StyleLibrary.load().names())


def test_shipped_preset_names() -> None:
    assert available_presets(Path("/nonexistent-root")) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset(tmp_path: Path, name: str) -> None:
    expected = PRESETS[name]
    settings, warnings = load(tmp_path, preset=name)
    assert warnings == []
    raw = json.loads((Path(__file__).parents[2] / "foci" / "settings" / "presets" / f"{name}.json").read_text())
    assert settings.default_model == expected["model"]
    assert settings.default_refiner == expected["refiner"]
    assert settings.default_refiner_switch == expected["switch"]
    assert settings.default_cfg_scale == expected["cfg"]
    assert settings.default_sample_sharpness == 2.0
    assert (settings.default_sampler, settings.default_scheduler) == (expected["sampler"], expected["scheduler"])
    assert settings.default_sampler in SAMPLERS and settings.default_scheduler in SCHEDULERS
    assert settings.default_performance == expected["performance"]
    assert settings.default_styles == expected["styles"]
    assert settings.default_aspect_ratio == expected["aspect"]
    assert settings.default_aspect_ratio in settings.available_aspect_ratios
    assert settings.previous_default_models == expected["previous"]
    assert settings.default_prompt == ""
    assert len(raw["default_loras"]) == 5
    enabled = [(slot.name, slot.weight) for slot in settings.lora_slots() if slot.name != "None"]
    assert enabled == ([expected["lora"]] if expected["lora"] else [])
    assert ("default_overwrite_step" in raw) == (name != "lightning")
    for key in ("checkpoint_downloads", "lora_downloads", "embeddings_downloads"):
        assert key in raw
    assert set(settings.checkpoint_downloads) == {expected["model"]} | ({expected["refiner"]} - {None})
    assert set(settings.lora_downloads) == ({expected["lora"][0]} if expected["lora"] else set())
    for url in [*settings.checkpoint_downloads.values(), *settings.lora_downloads.values()]:
        assert url.startswith(f"{HF}/") and "/resolve/main/" in url
    task = GenerationTask(**settings.task_defaults())
    assert task.base_model == expected["model"]
    styles = known_style_names()
    if styles is not None:
        assert set(settings.default_styles) <= styles


def test_preset_specifics(tmp_path: Path) -> None:
    realistic = load(tmp_path, preset="realistic")[0]
    assert realistic.default_prompt_negative == (
        "unrealistic, saturated, high contrast, big nose, painting, drawing, sketch, cartoon, anime, manga, render, "
        "CG, 3d, watermark, signature, label")
    assert realistic.lora_downloads["SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors"] == \
        f"{HF}/mashb1t/fav_models/resolve/main/fav/SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors"
    pony = load(tmp_path, preset="pony_v6")[0]
    assert pony.default_vae == "ponyDiffusionV6XL_vae.safetensors"
    assert pony.vae_downloads == {"ponyDiffusionV6XL_vae.safetensors":
                                  f"{HF}/mashb1t/fav_models/resolve/main/fav/ponyDiffusionV6XL_vae.safetensors"}
    assert pony.default_inpaint_engine_version == "None"
    assert load(tmp_path, preset="playground_v2.5")[0].default_inpaint_engine_version == "None"
    default = load(tmp_path, preset="default")[0]
    assert default.default_inpaint_engine_version == "v2.6"
    assert default.checkpoint_downloads[JUGGERNAUT] == \
        f"{HF}/lllyasviel/fav_models/resolve/main/fav/{JUGGERNAUT}"
    assert default.lora_downloads[OFFSET] == f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/{OFFSET}"
    sai = load(tmp_path, preset="sai")[0]
    assert sai.checkpoint_downloads["sd_xl_refiner_1.0_0.9vae.safetensors"] == \
        f"{HF}/stabilityai/stable-diffusion-xl-refiner-1.0/resolve/main/sd_xl_refiner_1.0_0.9vae.safetensors"
