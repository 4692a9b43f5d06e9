"""The field table: one line per task field drives the CLI, both metadata schemes and the config reader; the small
shared pieces (validation message, random seed, admission, performance facts) exist once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import foci.files.downloads as downloads
from foci.apps import cli
from foci.fields import Cli, Meta, field, field_facts, task_fields
from foci.messages import validation_message
from foci.records.metadata import (
    A1111_CODECS,
    FOOOCUS_CODECS,
    ImageRecord,
    task_from_metadata,
    to_a1111_text,
    to_fooocus_json,
)
from foci.sampling import samplers, schedulers
from foci.service.admission import AdmissionError, admit
from foci.settings.config import FociSettings, load_settings
from foci.settings.performance import HYPER_SD_LORA, LCM_LORA, LIGHTNING_LORA
from foci.task import MAX_SEED, SAMPLERS, SCHEDULERS, GenerationTask, random_seed
from foci.text.styles import StyleLibrary


class BlurTask(GenerationTask):
    """A task with one more field, added the way every field is: one line."""

    blur: float = field(0.0, ge=0.0, le=5.0, cli=Cli("--blur", help="blur radius"),
                        fooocus=Meta("blur", omit_if_default=True), a1111=Meta("Blur", omit_if_default=True),
                        config="default_blur")


def _record(task: GenerationTask) -> ImageRecord:
    width, height = task.size
    return ImageRecord(task=task, seed=task.seed, width=width, height=height, positive_items=[task.prompt],
                       negative_items=[], base_model_name=task.base_model, software="Foci 0.1.0", device="cpu")


# ------------------------------------------------------------------------------------------ adding a field
def test_a_new_field_is_picked_up_by_the_cli() -> None:
    parser = cli.build_parser(BlurTask)
    args = parser.parse_args(["generate", "a cat", "--blur", "1.5", "--seed", "3"])
    task = cli._task_from_args(args, FociSettings(), BlurTask)
    assert isinstance(task, BlurTask) and task.blur == 1.5 and task.seed == 3
    unset = cli._task_from_args(parser.parse_args(["generate", "a cat", "--seed", "3"]), FociSettings(), BlurTask)
    assert unset.blur == 0.0
    with pytest.raises(cli.CliError, match="blur: Input should be less than or equal to 5"):
        cli._task_from_args(parser.parse_args(["generate", "a", "--blur", "9"]), FociSettings(), BlurTask)
    generate = parser._subparsers._group_actions[0].choices["generate"]  # type: ignore[union-attr]
    assert "blur radius (0 to 5)" in " ".join(generate.format_help().split())
    assert "--blur" not in cli.build_parser().format_help()  # the plain task has no such option


def test_a_new_field_is_written_and_read_in_both_metadata_schemes() -> None:
    task = BlurTask(prompt="a cat", base_model="m.safetensors", blur=0.5, seed=7)
    fooocus = to_fooocus_json(_record(task))
    assert json.loads(fooocus)["blur"] == 0.5
    a1111 = to_a1111_text(_record(task))
    assert "Precision" not in a1111 and a1111.endswith("Blur: 0.5, Version: Foci v0.1.0")
    for payload, scheme in ((fooocus, "fooocus"), (a1111, "a1111")):
        back = task_from_metadata(payload, scheme, model_files=["m.safetensors"], model=BlurTask)
        assert isinstance(back, BlurTask) and back.blur == 0.5 and back.seed == 7
    default = BlurTask(prompt="a cat", base_model="m.safetensors")
    assert "blur" not in json.loads(to_fooocus_json(_record(default)))  # omitted when it is the default
    assert "Blur" not in to_a1111_text(_record(default))
    # the plain task's writers are unchanged by the subclass
    assert to_fooocus_json(_record(GenerationTask(prompt="a cat", base_model="m.safetensors", seed=7))) == \
        to_fooocus_json(_record(BlurTask(prompt="a cat", base_model="m.safetensors", seed=7)))


def test_a_new_field_is_read_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"default_blur": 2.5}))
    settings, warnings = load_settings(root=tmp_path, environ={}, task_model=BlurTask)
    assert warnings == [] and settings.task_defaults(BlurTask)["blur"] == 2.5
    assert "blur" not in settings.task_defaults()  # the plain task has no such field
    settings, warnings = load_settings(root=tmp_path, environ={"default_blur": "7"}, task_model=BlurTask)
    assert settings.task_defaults(BlurTask)["blur"] == 2.5  # the bad env value falls back to the file's
    assert len(warnings) == 1 and "default_blur" in warnings[0] and "less than or equal to 5" in warnings[0]
    _, warnings = load_settings(root=tmp_path, environ={})  # unknown to the plain task: a warning
    assert warnings == [f"unknown config key 'default_blur' in config file {tmp_path / 'config.json'} ignored"]


# ------------------------------------------------------------------------------------------ the table itself
def test_every_converter_the_table_names_exists() -> None:
    from foci.settings.config import CONFIG_CONVERTERS

    for facts in task_fields():
        if facts.fooocus is not None and facts.fooocus.codec is not None:
            assert facts.fooocus.codec in FOOOCUS_CODECS, facts.name
        if facts.a1111 is not None and facts.a1111.codec is not None:
            assert facts.a1111.codec in A1111_CODECS, facts.name
        if facts.cli is not None and facts.cli.convert is not None:
            assert facts.cli.convert in cli.CLI_CONVERTERS, facts.name
        if facts.config is not None and facts.config.convert is not None:
            assert facts.config.convert in CONFIG_CONVERTERS, facts.name
        for meta in (facts.fooocus, facts.a1111):  # a value without a codec is one plain int, float or text
            if meta is not None and meta.codec is None:
                assert facts.type in (int, float, str, bool), facts.name


def test_fields_sharing_a_metadata_key_share_its_codec() -> None:
    for scheme in ("fooocus", "a1111"):
        codecs: dict[str, str | None] = {}
        for facts in task_fields():
            meta = getattr(facts, scheme)
            if meta is not None:
                assert codecs.setdefault(meta.key, meta.codec) == meta.codec, (scheme, meta.key)
    assert field_facts("adm_scaler_end").a1111 == Meta("ADM Guidance", codec="adm")


def test_facts_come_from_the_pydantic_field() -> None:
    steps = field_facts("steps")
    assert (steps.type, steps.default, steps.ge, steps.le) == (int, 30, 1, 200)
    assert field_facts("sampler").choices == SAMPLERS and not field_facts("sampler").literal
    assert field_facts("precision").choices == ("auto", "fp32", "bf16", "fp16") and field_facts("precision").literal
    assert field_facts("refiner_model").type is str  # Name | None
    assert GenerationTask.model_json_schema()["properties"]["steps"] == {
        "default": 30, "maximum": 200, "minimum": 1, "title": "Steps", "type": "integer"}


def test_sampler_and_scheduler_names_live_once() -> None:
    assert samplers.SAMPLER_NAMES is SAMPLERS and schedulers.SCHEDULER_NAMES is SCHEDULERS


# ------------------------------------------------------------------------------------------ shared pieces
def test_one_validation_message() -> None:
    with pytest.raises(ValidationError) as caught:
        GenerationTask(steps=0, sampler="warp")
    assert validation_message(caught.value) == ("steps: Input should be greater than or equal to 1; "
                                                "sampler: unknown sampler 'warp'; choose one of: "
                                                + ", ".join(SAMPLERS))
    assert validation_message(caught.value, "task").startswith("task.steps: ")
    assert not hasattr(cli, "_validation_message")


def test_one_random_seed() -> None:
    seeds = {random_seed() for _ in range(50)}
    assert len(seeds) == 50 and all(0 <= seed <= MAX_SEED for seed in seeds)
    args = cli.build_parser().parse_args(["prompt", "a cat"])
    assert 0 <= cli._task_from_args(args, FociSettings()).seed <= MAX_SEED


def test_admission_checks_everything_the_server_refuses() -> None:
    styles = StyleLibrary.load()
    ok = GenerationTask(base_model="m.safetensors", styles=["Fooocus V2"])
    assert admit(ok, styles=styles, max_image_number=4) is ok
    cases = [(ok.model_copy(update={"performance": "Turbo"}), "performance: unknown performance 'Turbo'"),
             (ok.model_copy(update={"vae": "/etc/passwd"}), "vae: "),
             (ok.model_copy(update={"image_number": 5}), "image_number: 5 is above the server's maximum 4"),
             (ok.model_copy(update={"styles": ["No Such Style"]}), "styles: ")]
    for task, message in cases:
        with pytest.raises(AdmissionError) as caught:
            admit(task, styles=styles, max_image_number=4)
        assert str(caught.value).startswith(message)


def test_performance_facts_have_one_owner() -> None:
    for name in ("PRESET_PERFORMANCE", "PERFORMANCES", "PERFORMANCE_LORAS"):
        assert not hasattr(downloads, name)
    assert downloads.required_files("lcm")[-1] == LCM_LORA  # the preset's own performance, from its preset file
    assert downloads.required_files("default", performance="lightning")[-1] == LIGHTNING_LORA
    assert downloads.required_files("default", performance="hyper_sd")[-1] == HYPER_SD_LORA
    assert not {LCM_LORA, LIGHTNING_LORA, HYPER_SD_LORA} & set(downloads.required_files("default"))
    with pytest.raises(downloads.CatalogueError, match="unknown performance 'Turbo'"):
        downloads.required_files("default", performance="Turbo")
