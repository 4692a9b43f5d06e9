"""Issue 3 and 4 end to end: `foci generate --preset realistic` with styles, LoRA slot, CFG and expansion, and the
same flow from an empty models folder downloading everything from a loopback mirror."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from foci.apps.cli import main
from foci.files.downloads import load_catalogue
from foci.models.checkpoint import load_checkpoint
from foci.models.lora import lora_module_names
from foci.records.metadata import task_from_metadata
from foci.records.outputs import read_metadata
from tests.http_fixtures import FileServer

REALISTIC_MODEL = "realisticStockPhoto_v20.safetensors"
REALISTIC_LORA = "SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors"
EXPANSION_WORDS = ["intricate", "elegant", "detailed", "sharp", "focus", "light", "color", "beautiful", "dramatic",
                   "cinematic", "vivid", "soft", "warm", "deep", "clear", "bright", "rich", "fine", "calm", "bold"]


def tiny_lora_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A kohya LoRA touching one UNet and one CLIP-L linear of the tiny model."""
    components = load_checkpoint(checkpoint)
    names = lora_module_names(components.unet, components.text_encoder, components.text_encoder_2)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for prefix in ("lora_unet_", "lora_te1_"):
        name = next(n for n in sorted(names) if n.startswith(prefix) and n.endswith("to_q" if "unet" in prefix
                                                                                    else "q_proj"))
        component, module_path = names[name]
        weight = getattr(components, component).get_submodule(module_path).weight
        tensors[f"{name}.lora_down.weight"] = torch.randn(4, weight.shape[1], generator=generator)
        tensors[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 4, generator=generator)
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    return tensors


def tiny_expansion_files() -> dict[str, bytes]:
    """config.json, pytorch_model.bin and positive.txt of a tiny random GPT-2."""
    config = GPT2Config(vocab_size=50257, n_positions=256, n_embd=32, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return {"config.json": config.to_json_string().encode(), "pytorch_model.bin": buffer.getvalue(),
            "positive.txt": "\n".join(EXPANSION_WORDS).encode()}


@pytest.fixture(scope="module")
def realistic_files(tiny_checkpoint: Path) -> dict[str, bytes]:
    lora = Path(__file__).parent / "_tmp_lora.safetensors"
    try:
        save_file(tiny_lora_tensors(tiny_checkpoint), str(lora))
        lora_bytes = lora.read_bytes()
    finally:
        lora.unlink(missing_ok=True)
    return {"checkpoint": tiny_checkpoint.read_bytes(), "lora": lora_bytes, **tiny_expansion_files()}


def populate(root: Path, files: dict[str, bytes]) -> None:
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / REALISTIC_MODEL).write_bytes(files["checkpoint"])
    (root / "models" / "loras").mkdir()
    (root / "models" / "loras" / REALISTIC_LORA).write_bytes(files["lora"])
    expansion = root / "models" / "prompt_expansion" / "fooocus_expansion"
    expansion.mkdir(parents=True)
    for name in ("config.json", "pytorch_model.bin", "positive.txt"):
        (expansion / name).write_bytes(files[name])


def test_generate_with_realistic_preset(realistic_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path, realistic_files)
    monkeypatch.chdir(tmp_path)
    code = main(["generate", "a cat", "--preset", "realistic", "--aspect", "64*64", "--steps", "2",
                 "--image-number", "1", "--seed", "3", "--precision", "fp32", "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (path,) = [Path(line) for line in out.splitlines()]
    assert path.is_relative_to(tmp_path / "outputs")
    scheme, payload = read_metadata(path)
    data = json.loads(payload) if isinstance(payload, str) else payload
    assert data["guidance_scale"] == 3.0
    assert data["prompt_expansion"].startswith("a cat, ")
    assert set(data["prompt_expansion"].removeprefix("a cat, ").replace(",", " ").split()) <= set(EXPANSION_WORDS)
    assert [lora[0] for lora in data["loras"]] == [Path(REALISTIC_LORA).stem]
    assert data["loras"][0][1] == 0.25 and len(data["loras"][0][2]) == 10
    assert "unrealistic" in data["negative_prompt"]
    assert data["full_prompt"][-1] == data["prompt_expansion"]
    restored = task_from_metadata(payload, scheme)
    assert restored.styles == ["Fooocus V2", "Fooocus Photograph", "Fooocus Negative"]


def test_prompt_command_shows_items_with_expansion(realistic_files, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path, realistic_files)
    monkeypatch.chdir(tmp_path)
    assert main(["prompt", "a cat", "--seed", "1", "--preset", "realistic", "--image-number", "2"]) == 0
    out = capsys.readouterr().out
    first, second = (json.loads(block) for block in out.replace("}\n{", "}\x00{").split("\x00"))
    assert first["seed"] == 1 and second["seed"] == 2
    assert first["positive"][-1] == first["expansion"] and first["expansion"].startswith("a cat,")
    assert first["expansion"] != second["expansion"]  # seeded per image
    assert first["styles"] == ["Fooocus Photograph", "Fooocus Negative"]
    assert first["negative_top_k"] == len(first["negative"])


def test_unknown_style_and_lora_are_clear_errors(realistic_files, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path, realistic_files)
    monkeypatch.chdir(tmp_path)
    assert main(["prompt", "a cat", "--styles", "Fooocus Sharpp"]) == 2
    assert "Fooocus Sharp" in capsys.readouterr().err  # suggestion
    assert main(["generate", "a cat", "--preset", "realistic", "--lora", "missing_lora.safetensors:0.5",
                 "--aspect", "64*64", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing_lora.safetensors" in err and len(err.strip().splitlines()) == 1


def test_empty_models_folder_downloads_what_the_preset_needs(realistic_files, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # The shipped catalogue's own entries (names, URLs, folders, save_as), with the synthetic files' sizes/hashes:
    # the expansion's word list lives on GitHub, not the Hub, so it needs a mirror of its own.
    data_of = {REALISTIC_MODEL: realistic_files["checkpoint"], REALISTIC_LORA: realistic_files["lora"],
               "fooocus_expansion.bin": realistic_files["pytorch_model.bin"],
               "fooocus_expansion_positive.txt": realistic_files["positive.txt"]}
    shipped = load_catalogue()
    hf, github = "https://huggingface.co", "https://raw.githubusercontent.com"
    served, entries = {}, []
    for name, data in data_of.items():
        entry = dataclasses.asdict(shipped[name]) | {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                                      "presets": ["realistic"]}
        entries.append(entry)
        origin, prefix = (hf, "/hf") if entry["url"].startswith(hf) else (github, "/gh")
        served[prefix + entry["url"].removeprefix(origin)] = data
    catalogue = {"format": 1, "about": "test", "entries": entries}
    (tmp_path / "catalogue.json").write_text(json.dumps(catalogue))
    expansion = tmp_path / "models" / "prompt_expansion" / "fooocus_expansion"
    expansion.mkdir(parents=True)
    (expansion / "config.json").write_bytes(realistic_files["config.json"])  # tiny GPT-2, not stock GPT-2 small
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FOCI_CATALOGUE", str(tmp_path / "catalogue.json"))
    monkeypatch.delenv("FOCI_OFFLINE")
    with FileServer(served) as server:
        args = ["generate", "a cat", "--preset", "realistic", "--aspect", "64*64", "--steps", "2",
                "--image-number", "1", "--seed", "3", "--precision", "fp32", "--device", "cpu",
                "--hf-mirror", server.base_url + "/hf", "--mirror", f"{github}={server.base_url}/gh"]
        code = main(args)
        out, err = capsys.readouterr()
        assert code == 0, err
        assert sorted(r.path for r in server.requests) == sorted(served)  # exactly what the preset needs
        assert REALISTIC_MODEL in err  # a progress bar per file
        assert Path(out.strip()).is_file()
        for relative, key in ((f"checkpoints/{REALISTIC_MODEL}", "checkpoint"), (f"loras/{REALISTIC_LORA}", "lora"),
                              ("prompt_expansion/fooocus_expansion/pytorch_model.bin", "pytorch_model.bin")):
            assert (tmp_path / "models" / relative).read_bytes() == realistic_files[key]
        before = len(server.requests)
        assert main([*args, "--quiet"]) == 0
        assert len(server.requests) == before  # second run: everything is there, no request
    shutil.rmtree(tmp_path / "models" / "loras")
    monkeypatch.setenv("FOCI_OFFLINE", "1")
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="foci.engine.engine"):
        assert main([*args[:-4], "--quiet"]) == 0  # the preset's LoRA is optional: skipped, said once
    assert f"LoRA {REALISTIC_LORA} skipped: offline" in caplog.text and "models/loras" in caplog.text
    picture = Path(capsys.readouterr().out.strip())
    scheme, payload = read_metadata(picture)
    assert task_from_metadata(payload, scheme).loras == []  # the metadata records what was used


@pytest.mark.parametrize(("preset", "aspect", "cfg", "styles", "performance", "steps"), [
    ("realistic", "896*1152", 3.0, ["Fooocus V2", "Fooocus Photograph", "Fooocus Negative"], "Speed", 30),
    ("lightning", "1152*896", 4.0, ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"], "Lightning", 4),
    ("playground_v2.5", "1024*1024", 2.0, ["Fooocus V2"], "Speed", 30),
])
def test_preset_values_reach_the_task(preset: str, aspect: str, cfg: float, styles: list[str], performance: str,
                                      steps: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from foci.apps.cli import _load_settings, _task_from_args, build_parser
    from foci.settings.performance import apply_performance

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["generate", "a cat", "--preset", preset, "--seed", "1"])
    settings, _ = _load_settings(args)
    task, performance_loras = apply_performance(_task_from_args(args, settings))
    assert (task.aspect_ratio, task.guidance_scale, task.styles) == (aspect, cfg if steps != 4 else 1.0, styles)
    assert (task.performance, task.effective_steps) == (performance, steps)
    assert [name for name, _ in performance_loras] == (["sdxl_lightning_4step_lora.safetensors"] if steps == 4 else [])
