"""VAE-approximation live previews: the module's key layout and sizes, safe loading (weights only, shapes checked),
the renderer's choice between the VAE approximation and the linear preview, and the worker using it."""

from __future__ import annotations

import base64
import io
import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from foci.engine.engine import Engine, ProgressEvent
from foci.files.folders import ModelFolders
from foci.models.vae_approx import VaeApprox, VaeApproxError, layers_from_state_dict, load_vae_approx
from foci.service.events import EventBus
from foci.service.jobs import JobState, JobStore
from foci.service.previews import PreviewRenderer, latent_preview, vae_approx_preview
from foci.service.worker import Worker
from foci.task import GenerationTask

# What Fooocus's xlvaeapp.pth holds: conv1 … conv8, (in, out, kernel).
FOOOCUS_LAYOUT = ((4, 8, 7), (8, 16, 5), (16, 32, 3), (32, 64, 3), (64, 32, 3), (32, 16, 3), (16, 8, 3), (8, 3, 3))


def synthetic_state(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in the real file's key layout, built without our module."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for index, (channels_in, channels_out, kernel) in enumerate(FOOOCUS_LAYOUT, start=1):
        scale = (channels_in * kernel * kernel) ** -0.5
        state[f"conv{index}.weight"] = (torch.randn(channels_out, channels_in, kernel, kernel, generator=generator)
                                        * scale).to(dtype)
        state[f"conv{index}.bias"] = (torch.randn(channels_out, generator=generator) * 0.1).to(dtype)
    return state


def folders_with(tmp_path: Path, state: object | None = None, name: str = "xlvaeapp.pth") -> ModelFolders:
    folders = ModelFolders.default(tmp_path / "models")
    if state is not None:
        target = folders.download_folder("vae_approx") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)
    return folders


def latent(height: int = 8, width: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(seed))


def write_marker(path: str) -> str:
    """The 'payload' of the malicious pickle below: proof that code ran."""
    Path(path).write_text("code ran")
    return path


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return write_marker, (str(self.marker),)


# ----------------------------------------------------------------------------------------- module and loading
def test_module_keys_sizes_and_activation() -> None:
    model = VaeApprox()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = {}
    for index, (channels_in, channels_out, kernel) in enumerate(FOOOCUS_LAYOUT, start=1):
        expected[f"conv{index}.weight"] = (channels_out, channels_in, kernel, kernel)
        expected[f"conv{index}.bias"] = (channels_out,)
    assert shapes == expected and list(shapes) == list(expected)
    assert model.padding == 11 and len(model.convs) == 8
    assert tuple(model(torch.zeros(2, 4, 8, 12)).shape) == (2, 3, 16, 24)  # twice the latent: ¼ of the image

    with torch.no_grad():  # a constant last layer shows the leaky ReLU after conv8 too
        for conv in model.convs:
            conv.weight.zero_()
            conv.bias.zero_()
        model.conv8.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
        out = model(torch.randn(1, 4, 5, 7))
    assert torch.allclose(out[0, :, 3, 4], torch.tensor([1.0, -0.1, 0.5]))
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\]"):
        model(torch.zeros(4, 8, 8))


def test_synthetic_file_loads_and_renders_quarter_size_rgb(tmp_path: Path) -> None:
    folders = folders_with(tmp_path, synthetic_state(dtype=torch.float16))  # half-precision files are fine too
    path = folders.find("vae_approx", "xlvaeapp.pth")
    assert path is not None
    model = load_vae_approx(path)
    assert model.layers == FOOOCUS_LAYOUT and not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    assert torch.equal(model.conv4.weight, synthetic_state(dtype=torch.float16)["conv4.weight"].float())

    renderer = PreviewRenderer(folders, max_size=256)
    picture = renderer(latent(8, 12))
    array = np.asarray(picture)
    assert renderer.method == "vae_approx" and renderer.model_path == path
    assert picture.mode == "RGB" and array.dtype == np.uint8 and array.shape == (16, 24, 3)  # 64×96 image → 16×24
    assert array.std() > 0
    assert np.array_equal(array, np.asarray(vae_approx_preview(model, latent(8, 12))))
    expected = model(latent(8, 12))[0].permute(1, 2, 0) * 127.5 + 127.5
    assert np.abs(array.astype(float) - expected.clamp(0, 255).detach().numpy()).max() <= 0.51
    assert not np.array_equal(array, np.asarray(latent_preview(latent(8, 12), max_size=24)))

    other = renderer(latent(8, 12).to(torch.bfloat16)[0])  # [4, h, w], another dtype
    assert other.size == (24, 16)
    capped = PreviewRenderer(folders, max_size=32)(latent(40, 20))  # 80×40 → longer side capped at 32
    assert capped.size == (16, 32)


def test_safetensors_file_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "xlvaeapp.safetensors"
    save_file(synthetic_state(), str(path))
    assert load_vae_approx(path).layers == FOOOCUS_LAYOUT
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(VaeApproxError, match="not a readable safetensors"):
        load_vae_approx(path)


def _broken(change: Callable[[dict[str, torch.Tensor]], object]) -> object:
    state = synthetic_state()
    result = change(state)
    return result if isinstance(result, dict) else state


@pytest.mark.parametrize(("state", "message"), [
    (_broken(lambda s: s.__setitem__("conv3.weight", torch.zeros(32, 12, 3, 3))),
     "conv3 takes 12 channels but conv2 gives 16"),
    (_broken(lambda s: s.__setitem__("conv1.weight", torch.zeros(8, 3, 7, 7))), "4 latent channels"),
    (_broken(lambda s: s.__setitem__("conv2.bias", torch.zeros(15))), r"conv2.bias must be \[16\]"),
    (_broken(lambda s: s.__setitem__("conv5.weight", torch.zeros(32, 64, 3, 2))), r"\[out, in, k, k\]"),
    (_broken(lambda s: s.pop("conv8.bias")), "needs both a weight and a bias"),
    (_broken(lambda s: [s.pop("conv4.weight"), s.pop("conv4.bias")]), "without gaps"),
    (_broken(lambda s: s.__setitem__("decoder.weight", torch.zeros(3))), "unexpected key 'decoder.weight'"),
    (_broken(lambda s: s.__setitem__("conv1.bias", torch.zeros(8, dtype=torch.int64))), "floating-point"),
    (_broken(lambda s: s["conv6.weight"].__setitem__((0, 0, 0, 0), float("nan"))), "NaN or infinite"),
    (_broken(lambda s: {k: v for k, v in s.items() if not k.startswith("conv8")}), "3 RGB channels"),
    ([torch.zeros(3)], "holds a list, not a state dict"),
    ({}, "non-empty state dict"),
])
def test_files_that_do_not_fit_are_refused(tmp_path: Path, state: object, message: str) -> None:
    path = tmp_path / "xlvaeapp.pth"
    torch.save(state, path)
    with pytest.raises(VaeApproxError, match=message):
        load_vae_approx(path)


def test_unreadable_and_oversized_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "xlvaeapp.pth"
    with pytest.raises(VaeApproxError, match="does not exist"):
        load_vae_approx(path)
    torch.save(synthetic_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a cut-off download
    with pytest.raises(VaeApproxError, match="not a readable torch file"):
        load_vae_approx(path)
    with path.open("wb") as handle:
        handle.truncate(17 * 1024 * 1024)
    with pytest.raises(VaeApproxError, match="far smaller"):
        load_vae_approx(path)
    with pytest.raises(VaeApproxError):
        layers_from_state_dict({"conv1.weight": "text"})  # type: ignore[dict-item]


def test_pickle_with_a_payload_is_refused_and_never_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(Payload(armed)))  # the payload is live: unrestricted unpickling runs it
    assert armed.read_text() == "code ran"

    marker = tmp_path / "marker"
    state: dict[str, object] = dict(synthetic_state())
    state["conv1.bias"] = Payload(marker)
    folders = folders_with(tmp_path, state)
    path = folders.find("vae_approx", "xlvaeapp.pth")
    assert path is not None
    with pytest.raises(VaeApproxError, match="refused.*could run code.*write_marker"):
        load_vae_approx(path)
    assert not marker.exists()

    renderer = PreviewRenderer(folders)
    with caplog.at_level(logging.WARNING, logger="foci.service.previews"):
        picture = renderer(latent())
    assert renderer.method == "linear" and not marker.exists()
    assert np.array_equal(np.asarray(picture), np.asarray(latent_preview(latent())))
    assert any("refused" in record.getMessage() for record in caplog.records)


# ----------------------------------------------------------------------------------------- the renderer
def test_wrong_shaped_file_falls_back_to_linear_with_a_warning(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    state = synthetic_state()
    state["conv3.weight"] = torch.zeros(32, 12, 3, 3)
    renderer = PreviewRenderer(folders_with(tmp_path, state), max_size=256)
    with caplog.at_level(logging.WARNING, logger="foci.service.previews"):
        first = renderer(latent())
        second = renderer(latent())
    assert renderer.method == "linear" and renderer.model_path is None
    assert first.size == (96, 64) == latent_preview(latent()).size  # the linear preview: 8 pixels per latent cell
    assert np.array_equal(np.asarray(first), np.asarray(second))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "conv3 takes 12 channels" in warnings[0] and "linear" in warnings[0]


def test_renderer_without_the_file_uses_the_linear_preview(tmp_path: Path) -> None:
    for folders in (None, folders_with(tmp_path)):
        renderer = PreviewRenderer(folders, max_size=64)
        picture = renderer(latent())
        assert renderer.method == "linear" and renderer.model_path is None
        assert np.array_equal(np.asarray(picture), np.asarray(latent_preview(latent(), max_size=64)))
    with pytest.raises(ValueError, match="SDXL latent"):
        PreviewRenderer(None)(torch.zeros(1, 16, 8, 8))
    with pytest.raises(ValueError, match="max_size"):
        PreviewRenderer(None, max_size=0)


def test_renderer_picks_up_a_file_that_appears_or_changes(tmp_path: Path) -> None:
    folders = folders_with(tmp_path)
    renderer = PreviewRenderer(folders, recheck_interval=0)
    assert renderer(latent()).size == (96, 64) and renderer.method == "linear"
    target = folders.download_folder("vae_approx") / "xlvaeapp.pth"
    target.parent.mkdir(parents=True)
    torch.save(synthetic_state(), target)
    assert renderer(latent()).size == (24, 16) and renderer.method == "vae_approx"
    torch.save({"conv1.weight": torch.zeros(1)}, target)  # replaced by a bad file: refused, linear again
    assert renderer(latent()).size == (96, 64) and renderer.method == "linear"
    torch.save(synthetic_state(seed=3), target)
    assert renderer(latent()).size == (24, 16) and renderer.method == "vae_approx"
    target.unlink()
    assert renderer(latent()).size == (96, 64) and renderer.method == "linear"

    lazy = PreviewRenderer(folders, recheck_interval=3600)  # without rechecks a later file is not seen
    lazy(latent())
    torch.save(synthetic_state(), target)
    lazy(latent())
    assert lazy.method == "linear"


# ----------------------------------------------------------------------------------------- the worker
class LatentEngine:
    """A stand-in engine with model folders whose progress events carry a denoised latent."""

    def __init__(self, output_dir: Path, folders: ModelFolders | None) -> None:
        self.output_dir = output_dir
        self.folders = folders

    def generate(self, task: GenerationTask, *, on_progress: Callable[[ProgressEvent], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, save: bool = True,
                 on_download: Callable[[object], None] | None = None,
                 on_image: Callable[[object], None] | None = None) -> list[SimpleNamespace]:
        for step in (1, 2):
            if on_progress is not None:
                on_progress(ProgressEvent(0, 1, step, 2, 50.0 * step, latent(8, 8, seed=step)))
        path = self.output_dir / "image.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.new("RGB", (64, 64))
        picture.save(path)
        return [SimpleNamespace(path=path, seed=1, image=picture)]


def _preview_sizes(tmp_path: Path, engine: object) -> list[tuple[int, int]]:
    bus = EventBus()
    subscription = bus.subscribe()
    with JobStore(tmp_path / "jobs.sqlite3") as store:
        job = store.submit(GenerationTask(prompt="a cat", base_model="tiny-base.safetensors", aspect_ratio="64*64",
                                          steps=2, image_number=1, styles=[], loras=[], seed=5))
        worker = Worker(store, engine, bus, poll_interval=0.05, preview_interval=0.0)  # type: ignore[arg-type]
        assert worker.run_once() is not None
        assert store.get(job.id).state == JobState.DONE, store.get(job.id).error
    sizes = []
    deadline = time.monotonic() + 10
    event = None
    while event is None or not event.final:
        assert time.monotonic() < deadline, "no final event"
        event = subscription.get(0.5)
        if event is not None and event.preview_png:
            preview = Image.open(io.BytesIO(base64.b64decode(event.preview_png)))
            assert preview.format == "PNG" and preview.mode == "RGB"
            sizes.append(preview.size)
    subscription.close()
    return sizes


def test_worker_previews_use_the_engines_vae_approximation(tmp_path: Path) -> None:
    with_file = LatentEngine(tmp_path / "out", folders_with(tmp_path / "a", synthetic_state()))
    assert _preview_sizes(tmp_path / "a", with_file) == [(16, 16), (16, 16)]  # 64×64 image → 16×16
    without = LatentEngine(tmp_path / "out", folders_with(tmp_path / "b"))
    assert _preview_sizes(tmp_path / "b", without) == [(64, 64), (64, 64)]  # linear: 8 pixels per latent cell


def test_real_engine_previews_with_the_vae_approximation(tmp_path: Path, tiny_models_dir: Path) -> None:
    approx = tmp_path / "approx"
    approx.mkdir()
    torch.save(synthetic_state(), approx / "xlvaeapp.pth")
    folders = ModelFolders.from_settings({"path_vae_approx": str(approx)}, tiny_models_dir)
    engine = Engine(models_dir=tiny_models_dir, output_dir=tmp_path / "outputs", device="cpu", precision="fp32",
                    folders=folders)
    assert _preview_sizes(tmp_path, engine) == [(16, 16), (16, 16)]
