"""The ``foci`` command: a real run, metadata printing, and one clear line for every kind of bad input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from foci.apps.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_prints_paths_and_metadata_reads_back(tiny_checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run_cli(["generate", "a cat", "--seed", "5", "--image-number", "2", "--aspect", "64*64",
                              "--steps", "3", "--model", str(tiny_checkpoint), "--output-dir", str(out_dir),
                              "--precision", "fp32", "--device", "cpu", "--styles", "", "--lora", "none"], capsys)
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert len(paths) == 2 and all(p.is_file() and p.is_relative_to(out_dir) for p in paths)
    assert "image 1/2" in err  # progress bar
    code, out, err = run_cli(["metadata", str(paths[1])], capsys)
    assert code == 0
    assert '"seed": "6"' in out and '"prompt": "a cat"' in out


def test_console_script_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("foci")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "foci.apps.cli"]
    done = subprocess.run([*command, "generate", "a cat", "--sampler", "warp_drive"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
    assert "unknown sampler 'warp_drive'" in done.stderr


class Payload:
    """A pickle that would create a file when unpickled with plain torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good_header = folder / "truncated.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(64, 4, 3, 3)}, str(good_header))
    good_header.write_bytes(good_header.read_bytes()[:-100])
    random_bytes = folder / "random.safetensors"
    random_bytes.write_bytes(os.urandom(4096))
    sd15 = folder / "sd15.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(sd15))
    payload = folder / "evil.ckpt"
    with payload.open("wb") as handle:
        pickle.dump({"state_dict": Payload(folder / "PWNED")}, handle)
    return {"truncated": good_header, "random": random_bytes, "sd15": sd15, "pickle": payload}


@pytest.mark.parametrize("kind", ["truncated", "random", "sd15", "pickle"])
def test_bad_checkpoints_give_one_clear_line(kind: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    files = bad_files(tmp_path / "models")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(["generate", "a cat", "--aspect", "64*64", "--steps", "2", "--model",
                              str(files[kind]), "--output-dir", str(out_dir), "--quiet", "--styles", "",
                              "--lora", "none"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("foci: error:"), err
    assert files[kind].name in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "models" / "PWNED").exists()  # nothing executed
    assert not out_dir.exists()  # nothing written


@pytest.mark.parametrize(("args", "message"), [
    (["--sampler", "nope"], "unknown sampler"),
    (["--scheduler", "nope"], "unknown scheduler"),
    (["--aspect", "1000*1001"], "multiple of 8"),
    (["--aspect", "big"], "1152*896"),
    (["--steps", "0"], "steps"),
    (["--seed", "-1"], "seed"),
])
def test_bad_settings_give_one_clear_line(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["generate", "a cat", "--output-dir", str(tmp_path / "out"), *args], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_metadata_of_a_file_without_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    code, out, err = run_cli(["metadata", str(plain)], capsys)
    assert code in (0, 1)
    assert "no" in (out + err).lower()
    code, out, err = run_cli(["metadata", str(tmp_path / "missing.png")], capsys)
    assert code == 2 and "no such file" in err


def test_make_checkpoint_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from foci.models.checkpoint import read_tensor_shapes

    code, out, _ = run_cli(["dev", "make-checkpoint", "--tiny", str(tmp_path / "t.safetensors")], capsys)
    assert code == 0 and Path(out.strip()).is_file()
    shapes = read_tensor_shapes(tmp_path / "t.safetensors")
    assert any(k.startswith("conditioner.embedders.1.model.") for k in shapes)


def test_models_pin_fixes_the_hash_that_verify_and_downloads_expect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    import json

    monkeypatch.chdir(tmp_path)
    entry = {"name": "w.pth", "url": "https://example.org/w.pth", "folder": "upscale_models", "size": None,
             "sha256": None, "licence": "test"}
    (tmp_path / "catalogue.json").write_text(json.dumps({"entries": [entry]}))
    monkeypatch.setenv("FOCI_CATALOGUE", str(tmp_path / "catalogue.json"))
    weights = Path("models") / "upscale_models" / "w.pth"  # printed as found, relative to --models-dir
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"first weights")
    first, second = (hashlib.sha256(data).hexdigest() for data in (b"first weights", b"other weights"))
    models = ["--models-dir", "models"]

    assert run_cli(["models", "verify", *models], capsys)[1] == f"unknown hash\t{weights}\n"
    code, out, err = run_cli(["models", "pin", "w.pth", *models], capsys)
    assert (code, out) == (0, f"pinned w.pth sha256 {first}\n"), err
    assert run_cli(["models", "verify", *models], capsys)[:2] == (0, f"ok\t{weights}\n")
    weights.write_bytes(b"other weights")
    code, out, _ = run_cli(["models", "verify", *models], capsys)
    assert (code, out) == (1, f"corrupt: expected sha256 {first} got {second}\t{weights}\n")
    assert run_cli(["models", "pin", "w.pth", second.upper(), *models], capsys)[:2] == (0, f"pinned w.pth sha256 "
                                                                                          f"{second}\n")
    assert run_cli(["models", "verify", *models], capsys)[:2] == (0, f"ok\t{weights}\n")
    code, _, err = run_cli(["models", "pin", "w.pth", "abc", *models], capsys)
    assert code == 2 and "'abc' is not a SHA-256" in err
    code, _, err = run_cli(["models", "pin", "nope.pth", *models], capsys)
    assert code == 2 and "unknown model file 'nope.pth'" in err


def test_make_models_tiny_writes_every_file_where_the_folders_look(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from foci.files.folders import ModelFolders

    assert main(["dev", "make-models", "--tiny", str(tmp_path / "models")]) == 0
    printed = sorted(Path(line) for line in capsys.readouterr().out.split())
    assert [p.relative_to(tmp_path / "models").as_posix() for p in printed] == [
        "checkpoints/tiny.safetensors", "inpaint/fooocus_inpaint_head.pth", "inpaint/inpaint.fooocus.patch",
        "inpaint/inpaint_v25.fooocus.patch", "inpaint/inpaint_v26.fooocus.patch",
        "upscale_models/fooocus_upscaler_s409985e5.bin"]
    folders = ModelFolders.default(tmp_path / "models")
    assert folders.find("checkpoints", "tiny.safetensors") == printed[0]
    assert folders.find("upscale_models", "fooocus_upscaler_s409985e5.bin") == printed[-1]


def test_output_into_a_closed_pipe_is_not_an_error() -> None:
    script = "import sys; from foci.apps.cli import main; sys.exit(main(['styles', 'list']))"
    reader = "import sys; sys.stdin.readline()"  # reads one line, then leaves
    producer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    consumer = subprocess.run([sys.executable, "-c", reader], stdin=producer.stdout, timeout=120)
    producer.stdout.close()
    _, err = producer.communicate(timeout=120)
    assert consumer.returncode == 0
    assert producer.returncode == 0 and b"Broken pipe" not in err, err


def test_readme_offline_tiny_path_runs_verbatim(tmp_path: Path) -> None:
    """Issue 16.2: the README's offline path on a fresh folder: tiny models, then generate with the default preset
    (its offset LoRA and the expansion model are missing: each skipped with one warning, images still written)."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = re.search(r"model: `(\.venv/bin/foci dev make-models[^`]*)` then `(\.venv/bin/foci generate[^`]*)`",
                         readme.replace("\n", " "))
    assert commands is not None
    foci = str(Path(sys.executable).with_name("foci"))
    env = {k: v for k, v in os.environ.items() if k != "FOCI_OFFLINE"}
    outputs = []
    for command in commands.groups():
        argv = [foci, *[arg.strip('"') for arg in re.findall(r'"[^"]*"|\S+', command)][1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done)
    pictures = [Path(line) for line in outputs[1].stdout.split()]
    assert len(pictures) == 2 and all(p.is_file() and p.suffix == ".png" for p in pictures)
    warnings = outputs[1].stderr
    assert "prompt expansion (Fooocus V2) skipped" in warnings and "LoRA sd_xl_offset_example" in warnings


# ------------------------------------------------------------------------------------------ input image flags
def _image_files(folder: Path) -> dict[str, Path]:
    """An input image, a mask and files that are not usable images."""
    import numpy as np
    from PIL import Image

    from tests.service.test_hardening import png_header_only

    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(folder / "photo.png")
    Image.new("L", (56, 40), 255).save(folder / "mask.png")
    (folder / "notes.txt").write_text("not an image\n")
    whole = (folder / "photo.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "bomb.png").write_bytes(png_header_only(10_000, 10_000))
    return {path.stem: path for path in folder.iterdir()}


def _parsed_task(argv: list[str]):
    from foci.apps.cli import _load_settings, _task_from_args, build_parser

    args = build_parser().parse_args(argv)
    settings, _ = _load_settings(args)
    return args, settings, _task_from_args(args, settings)


def test_input_image_flags_parse_into_the_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from foci.task import INPAINT_MODIFY

    monkeypatch.chdir(tmp_path)
    files = _image_files(tmp_path / "in")
    photo_hash = hashlib.sha256(files["photo"].read_bytes()).hexdigest()
    mask_hash = hashlib.sha256(files["mask"].read_bytes()).hexdigest()

    _, _, vary = _parsed_task(["generate", "a cat", "--input-image", str(files["photo"]), "--uov", "Vary (Subtle)"])
    assert (vary.input_image, vary.uov_method, vary.input_mode) == (photo_hash, "Vary (Subtle)", "uov")
    assert vary.inpaint_mask is None and vary.outpaint == []

    _, _, inpaint = _parsed_task([
        "generate", "a cat", "--input-image", str(files["photo"]), "--inpaint-mask", str(files["mask"]),
        "--outpaint", "left, TOP", "--inpaint-method", INPAINT_MODIFY, "--inpaint-engine", "v2.5",
        "--inpaint-strength", "0.7", "--inpaint-respective-field", "0.3", "--mask-dilate", "-5", "--invert-mask",
        "--inpaint-prompt", "a red hat", "--debug-inpaint"])
    assert inpaint.input_mode == "inpaint"
    assert (inpaint.input_image, inpaint.inpaint_mask) == (photo_hash, mask_hash)
    assert inpaint.outpaint == ["Left", "Top"] and inpaint.inpaint_method == INPAINT_MODIFY
    assert (inpaint.inpaint_engine, inpaint.effective_inpaint_engine) == ("v2.5", "v2.5")
    assert (inpaint.inpaint_strength, inpaint.inpaint_respective_field) == (0.7, 0.3)
    assert (inpaint.mask_dilate, inpaint.invert_mask, inpaint.debug_inpaint) == (-5, True, True)
    assert inpaint.inpaint_prompt == "a red hat" and inpaint.uov_method == "Disabled"

    _, _, no_engine = _parsed_task(["generate", "a cat", "--input-image", str(files["photo"]), "--outpaint",
                                    "right", "--inpaint-engine", "None"])
    assert (no_engine.inpaint_engine, no_engine.effective_inpaint_engine) == ("None", "None")
    assert (no_engine.inpaint_mask, no_engine.outpaint) == (None, ["Right"])
    _, _, defaults = _parsed_task(["generate", "a cat", "--input-image", str(files["photo"]), "--outpaint", "bottom"])
    assert (defaults.inpaint_engine, defaults.inpaint_strength, defaults.inpaint_respective_field) == (None, None, None)
    assert (defaults.effective_inpaint_engine, defaults.effective_inpaint_strength,
            defaults.effective_respective_field) == ("v2.6", 1.0, 0.618)  # the default method's (§1.7)


def test_input_images_go_into_the_engines_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from foci.apps.cli import _engine, _store_inputs

    monkeypatch.chdir(tmp_path)
    files = _image_files(tmp_path / "in")
    args, settings, task = _parsed_task(["generate", "a cat", "--input-image", str(files["photo"]), "--inpaint-mask",
                                         str(files["mask"]), "--output-dir", str(tmp_path / "out"),
                                         "--models-dir", str(tmp_path / "models")])
    engine = _engine(args, settings, tmp_path)
    _store_inputs(args, engine)
    assert engine.inputs.path(task.input_image).read_bytes() == files["photo"].read_bytes()
    assert engine.inputs.path(task.inpaint_mask).read_bytes() == files["mask"].read_bytes()
    assert engine.inputs.folder == tmp_path / "out" / "inputs"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("args", "message"), [
    (["--input-image", "{in}/missing.png", "--uov", "Vary (Subtle)"], "missing.png: No such file or directory"),
    (["--input-image", "{in}", "--uov", "Vary (Subtle)"], "Is a directory"),
    (["--input-image", "{in}/notes.txt", "--uov", "Vary (Subtle)"], "notes.txt is not an image file Foci can read"),
    (["--input-image", "{in}/truncated.png", "--uov", "Vary (Subtle)"], "damaged or truncated"),
    (["--input-image", "{in}/bomb.png", "--uov", "Vary (Subtle)"], "far more pixels than the 33.6 Mpx"),
    (["--input-image", "{in}/photo.png", "--inpaint-mask", "{in}/notes.txt"], "notes.txt is not an image file"),
    (["--input-image", "{in}/photo.png", "--outpaint", "left,sideways"], "--outpaint: unknown direction 'sideways'"),
    (["--uov", "Vary (Subtle)"], "need an input_image"),
    (["--inpaint-mask", "{in}/mask.png"], "need an input_image"),
    (["--input-image", "{in}/photo.png"], "input_image is given but not used"),
    (["--input-image", "{in}/photo.png", "--uov", "Vary (Strong)", "--inpaint-mask", "{in}/mask.png"],
     "choose either Upscale/Vary"),
    (["--input-image", "{in}/photo.png", "--outpaint", "left", "--inpaint-strength", "1.5"], "inpaint_strength"),
    (["--input-image", "{in}/photo.png", "--outpaint", "left", "--mask-dilate", "65"], "mask_dilate"),
])
def test_bad_input_images_give_one_clear_line(args: list[str], message: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _image_files(tmp_path / "in")
    argv = [arg.replace("{in}", str(tmp_path / "in")) for arg in args]
    code, out, err = run_cli(["generate", "a cat", "--output-dir", str(tmp_path / "out"), *argv], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("foci: error: ") and message in err, err
    assert not (tmp_path / "out").exists()  # nothing stored, nothing generated


def test_help_lists_the_input_image_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in ("--input-image IMAGE", "--uov", "Vary (Subtle)", "Upscale (Fast 2x)", "--inpaint-mask MASK",
                   "white = repaint", "--outpaint", "left,right,top,bottom", "--inpaint-method",
                   "Improve Detail (face, hand, eyes, etc.)", "--inpaint-engine {None,v1,v2.5,v2.6}",
                   "--inpaint-strength", "--inpaint-respective-field", "--mask-dilate", "(-64 to 64)",
                   "--invert-mask", "--inpaint-prompt", "--debug-inpaint"):
        assert option in text, option

def test_styles_import_copies_valid_fooocus_style_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16.5: `foci styles import DIR` (synthetic styles, written here)."""
    import json

    monkeypatch.chdir(tmp_path)
    styles = tmp_path / "Fooocus" / "sdxl_styles"
    (styles / "samples").mkdir(parents=True)
    mine = [{"name": "test-glow", "prompt": "glowing {prompt}", "negative_prompt": "dull"},
            {"name": "Test Mist", "prompt": "{prompt} in mist"},
            {"name": "Fooocus Sharp", "prompt": "my sharp {prompt}"}]
    (styles / "my_styles.json").write_text(json.dumps(mine))
    (styles / "broken.json").write_text("[{not json")
    (styles / "wrong.json").write_text(json.dumps({"name": "not a list"}))
    (styles / "samples" / "ignored.json").write_text("[]")

    code, out, err = run_cli(["styles", "import", str(tmp_path / "Fooocus")], capsys)
    assert code == 1  # some files were refused
    assert "imported my_styles.json (3 styles)" in out
    assert "1 file(s) imported into styles: 3 styles, 2 new, 1 replacing Foci's own of the same name; " \
           "2 file(s) skipped as invalid, 0 kept" in out
    assert "skipped broken.json: cannot read style file" in err and "skipped wrong.json" in err
    assert json.loads((tmp_path / "styles" / "my_styles.json").read_text()) == mine
    assert sorted(p.name for p in (tmp_path / "styles").iterdir()) == ["my_styles.json"]
    listed = run_cli(["styles", "list"], capsys)[1].splitlines()
    assert "Test Glow" in listed and "Test Mist" in listed
    assert "prompt: my sharp {prompt}" in run_cli(["styles", "show", "Fooocus Sharp"], capsys)[1]

    (styles / "broken.json").unlink()
    (styles / "wrong.json").unlink()
    code, out, _ = run_cli(["styles", "import", str(styles)], capsys)  # the sdxl_styles folder itself, again
    assert code == 0 and "unchanged my_styles.json" in out
    (tmp_path / "styles" / "my_styles.json").write_text("[]")
    code, _, err = run_cli(["styles", "import", str(styles)], capsys)
    assert code == 1 and "exists and differs: kept" in err
    assert (tmp_path / "styles" / "my_styles.json").read_text() == "[]"  # nothing lost
    assert run_cli(["styles", "import", str(styles), "--overwrite"], capsys)[0] == 0
    code, _, err = run_cli(["styles", "import", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no style files" in err


def test_models_verify_says_so_when_all_is_well(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16.7: a closing line also when nothing is wrong."""
    import hashlib
    import json

    monkeypatch.chdir(tmp_path)
    data = b"upscaler weights"
    entry = {"name": "w.pth", "url": "https://example.org/w.pth", "folder": "upscale_models", "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "licence": "test"}
    (tmp_path / "catalogue.json").write_text(json.dumps({"entries": [entry]}))
    monkeypatch.setenv("FOCI_CATALOGUE", str(tmp_path / "catalogue.json"))
    models = ["--models-dir", "models"]
    code, out, err = run_cli(["models", "verify", *models], capsys)
    assert (code, out) == (0, "") and err.strip() == "no catalogue model file in the model folders"
    (tmp_path / "models" / "upscale_models").mkdir(parents=True)
    (tmp_path / "models" / "upscale_models" / "w.pth").write_bytes(data)
    (tmp_path / "models" / "checkpoints").mkdir()
    (tmp_path / "models" / "checkpoints" / "mine.safetensors").write_bytes(b"x")
    code, out, err = run_cli(["models", "verify", *models], capsys)
    assert code == 0 and out.startswith("ok\t")
    assert err.strip() == "all 1 catalogue file(s) ok; 1 other file(s) are not in the catalogue and were not checked"


def test_a_text_file_as_model_is_named_as_such_and_a_missing_one_lists_the_checkpoints(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16.7: a .txt is "not a model file" (not "damaged"); a missing checkpoint's message lists the others."""
    import shutil

    notes = tmp_path / "notes.txt"
    notes.write_text("my prompts\n")
    common = ["--aspect", "64*64", "--steps", "2", "--styles", "", "--lora", "none", "--quiet", "--offline",
              "--output-dir", str(tmp_path / "out"), "--models-dir", str(tmp_path / "models")]
    code, _, err = run_cli(["generate", "a cat", "--model", str(notes), *common], capsys)
    assert code == 2 and "damaged" not in err
    assert err.strip() == "foci: error: notes.txt is not a model file (a .txt file): give an SDXL checkpoint " \
                          "(.safetensors, .sft, .ckpt, .pt, .pth, .bin)"
    assert notes.read_text() == "my prompts\n"  # left alone

    code, _, err = run_cli(["generate", "a cat", "--model", "nope.safetensors", *common], capsys)
    assert code == 2 and err.rstrip().endswith("; no checkpoints there yet"), err
    checkpoints = tmp_path / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_checkpoint, checkpoints / "a.safetensors")
    (checkpoints / "sub").mkdir()
    shutil.copy(tiny_checkpoint, checkpoints / "sub" / "b.safetensors")
    (checkpoints / "put_checkpoints_here").write_text("")
    code, _, err = run_cli(["generate", "a cat", "--model", "nope.safetensors", *common], capsys)
    assert code == 2 and err.rstrip().endswith("; available: a.safetensors, sub/b.safetensors"), err


def test_cli_fast_upscale_and_debug_inpaint_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`foci generate --input-image` on the tiny models: Upscale (Fast 2x) writes the super-resolved image,
    --debug-inpaint the three preprocessing images; the metadata names the input image by hash."""
    import hashlib

    import numpy as np
    from PIL import Image

    from foci.dev.make_models import write_tiny_models

    models = tmp_path / "models"
    write_tiny_models(models)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["--models-dir", str(models), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
              "--precision", "fp32", "--styles", "", "--lora", "none", "--offline", "--image-number", "1"]
    code, out, err = run_cli(["generate", "a cat", "--input-image", str(photo), "--uov", "Upscale (Fast 2x)",
                              *common], capsys)
    assert code == 0, err
    (upscaled,) = [Path(line) for line in out.splitlines()]
    assert Image.open(upscaled).size == (1152, 896)  # 128×96 is below shape ceil 1024: brought up to it
    code, out, err = run_cli(["metadata", str(upscaled)], capsys)
    assert hashlib.sha256(photo.read_bytes()).hexdigest() in out and "Upscale (Fast 2x)" in out
    code, out, err = run_cli(["generate", "a cat", "--input-image", str(photo), "--inpaint-mask",
                              str(tmp_path / "mask.png"), "--debug-inpaint", *common], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 3
