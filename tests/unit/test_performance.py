"""Performance modes (§1.9) and aspect ratios (§1.3)."""

from __future__ import annotations

from math import gcd

import pytest

from foci.settings.aspect_ratios import (
    DEFAULT_ASPECT_RATIO,
    SDXL_ASPECT_RATIOS,
    AspectRatioError,
    aspect_label,
    normalize_aspect_ratio,
    parse_aspect_ratio,
)
from foci.settings.performance import (
    PERFORMANCE_LORA_URLS,
    PERFORMANCE_MODES,
    Performance,
    PerformanceError,
    apply_performance,
    performance_lora_names,
)
from foci.task import GenerationTask

RESTRICTED_COMMON = {
    "refiner_model": None, "sharpness": 0.0, "guidance_scale": 1.0, "adaptive_cfg": 1.0, "refiner_switch": 1.0,
    "adm_scaler_positive": 1.0, "adm_scaler_negative": 1.0, "adm_scaler_end": 0.0,
}
EXPECTED = {
    # mode: (steps, uov_steps, lora, sampler, scheduler)
    Performance.QUALITY: (60, 36, None, None, None),
    Performance.SPEED: (30, 18, None, None, None),
    Performance.EXTREME_SPEED: (8, 8, ("sdxl_lcm_lora.safetensors", 1.0), "lcm", "lcm"),
    Performance.LIGHTNING: (4, 4, ("sdxl_lightning_4step_lora.safetensors", 1.0), "euler", "sgm_uniform"),
    Performance.HYPER_SD: (4, 4, ("sdxl_hyper_sd_4step_lora.safetensors", 0.8), "dpmpp_sde_gpu", "karras"),
}


def test_enum_values_and_order() -> None:
    assert [member.value for member in Performance] == ["Quality", "Speed", "Extreme Speed", "Lightning", "Hyper-SD"]
    assert list(PERFORMANCE_MODES) == list(Performance)


@pytest.mark.parametrize("mode", list(Performance))
def test_mode_table_exact(mode: Performance) -> None:
    steps, uov_steps, lora, sampler, scheduler = EXPECTED[mode]
    entry = PERFORMANCE_MODES[mode]
    assert (entry.steps, entry.uov_steps, entry.lora) == (steps, uov_steps, lora)
    if sampler is None:
        assert dict(entry.overrides) == {}
        assert not mode.is_restricted
    else:
        assert dict(entry.overrides) == {**RESTRICTED_COMMON, "sampler": sampler, "scheduler": scheduler}
        assert mode.is_restricted


@pytest.mark.parametrize("text, expected", [
    ("Extreme Speed", Performance.EXTREME_SPEED), ("extreme_speed", Performance.EXTREME_SPEED),
    ("EXTREME SPEED", Performance.EXTREME_SPEED), ("hyper-sd", Performance.HYPER_SD),
    ("HYPER_SD", Performance.HYPER_SD),
    ("quality", Performance.QUALITY), (Performance.SPEED, Performance.SPEED),
])
def test_parse(text: str, expected: Performance) -> None:
    assert Performance.parse(text) is expected


def test_parse_unknown() -> None:
    with pytest.raises(PerformanceError, match="unknown performance 'Turbo'"):
        Performance.parse("Turbo")
    with pytest.raises(PerformanceError):
        apply_performance(GenerationTask(performance="Turbo"))


@pytest.mark.parametrize("mode", list(Performance))
def test_apply_sets_mode_steps_and_overrides(mode: Performance) -> None:
    steps, _, lora, sampler, scheduler = EXPECTED[mode]
    task = GenerationTask(performance=mode.value, guidance_scale=9.0, sharpness=5.0, refiner_model="ref.safetensors",
                          loras=[{"name": "user.safetensors", "weight": 0.7}])
    result, loras = apply_performance(task)
    assert result.steps == steps
    assert loras == ([lora] if lora else [])
    assert [spec.name for spec in result.loras] == ["user.safetensors"]  # user LoRAs untouched
    if sampler is None:
        assert (result.guidance_scale, result.sharpness, result.refiner_model) == (9.0, 5.0, "ref.safetensors")
        assert (result.sampler, result.scheduler) == ("dpmpp_2m_sde_gpu", "karras")
    else:
        for key, value in {**RESTRICTED_COMMON, "sampler": sampler, "scheduler": scheduler}.items():
            assert getattr(result, key) == value, key
    assert task.guidance_scale == 9.0  # the input task is not modified


def test_hyper_sd_lora_weight() -> None:
    _, loras = apply_performance(GenerationTask(performance="Hyper-SD"))
    assert loras == [("sdxl_hyper_sd_4step_lora.safetensors", 0.8)]


def test_explicit_steps_kept_and_overwrite_wins() -> None:
    result, _ = apply_performance(GenerationTask(performance="Quality", steps=12))
    assert result.steps == 12
    result, _ = apply_performance(GenerationTask(performance="Lightning", steps=6))
    assert (result.steps, result.sampler) == (6, "euler")
    result, _ = apply_performance(GenerationTask(performance="Lightning", overwrite_step=7))
    assert (result.steps, result.effective_steps) == (4, 7)


def test_mode_steps_are_not_marked_explicit() -> None:
    quality, _ = apply_performance(GenerationTask(performance="Quality"))
    assert quality.steps == 60 and "steps" not in quality.model_fields_set
    again, _ = apply_performance(quality.model_copy(update={"performance": "Extreme Speed"}))
    assert again.steps == 8
    assert apply_performance(quality)[0].steps == 60  # idempotent


def test_performance_label_normalised() -> None:
    result, _ = apply_performance(GenerationTask(performance="extreme_speed"))
    assert result.performance == "Extreme Speed"


def test_performance_lora_names_and_urls() -> None:
    names = {"sdxl_lcm_lora.safetensors", "sdxl_lightning_4step_lora.safetensors",
             "sdxl_hyper_sd_4step_lora.safetensors"}
    assert performance_lora_names() == names
    assert set(PERFORMANCE_LORA_URLS) == names
    assert PERFORMANCE_LORA_URLS["sdxl_lcm_lora.safetensors"] == \
        "https://huggingface.co/lllyasviel/misc/resolve/main/sdxl_lcm_lora.safetensors"


# --- aspect ratios ----------------------------------------------------------------------------------------------

LABELS = [
    "704×1408 (1:2)", "704×1344 (11:21)", "768×1344 (4:7)", "768×1280 (3:5)", "832×1216 (13:19)",
    "832×1152 (13:18)", "896×1152 (7:9)", "896×1088 (14:17)", "960×1088 (15:17)", "960×1024 (15:16)",
    "1024×1024 (1:1)", "1024×960 (16:15)", "1088×960 (17:15)", "1088×896 (17:14)", "1152×896 (9:7)",
    "1152×832 (18:13)", "1216×832 (19:13)", "1280×768 (5:3)", "1344×768 (7:4)", "1344×704 (21:11)",
    "1408×704 (2:1)", "1472×704 (23:11)", "1536×640 (12:5)", "1600×640 (5:2)", "1664×576 (26:9)",
    "1728×576 (3:1)",
]


def test_aspect_ratios_exact() -> None:
    assert len(SDXL_ASPECT_RATIOS) == 26
    assert [aspect_label(value) for value in SDXL_ASPECT_RATIOS] == LABELS
    assert DEFAULT_ASPECT_RATIO == "1152*896" and SDXL_ASPECT_RATIOS[14] == DEFAULT_ASPECT_RATIO
    for value in SDXL_ASPECT_RATIOS:
        width, height = parse_aspect_ratio(value)
        assert width % 64 == 0 and height % 64 == 0
        assert 0.78e6 <= width * height <= 1.06e6  # about one megapixel


def test_aspect_label_and_normalise() -> None:
    assert aspect_label("1920x1080") == "1920×1080 (16:9)"
    assert normalize_aspect_ratio("1152×896 (9:7)") == "1152*896"
    assert normalize_aspect_ratio(" 832 x 1216 ") == "832*1216"
    for label in LABELS:  # labels round-trip through the task's size parser
        assert GenerationTask(aspect_ratio=label).aspect_ratio == normalize_aspect_ratio(label)
    assert gcd(*parse_aspect_ratio("1728*576")) == 576


@pytest.mark.parametrize("bad", ["", "square", "0*512", "1152*", "a*b"])
def test_aspect_bad(bad: str) -> None:
    with pytest.raises(AspectRatioError):
        aspect_label(bad)
