"""Shared fixtures: tiny synthetic SDXL checkpoints written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# No test may reach the internet: the CLI's downloader stays offline unless a test serves files on loopback.
os.environ["FOCI_OFFLINE"] = "1"

LAYERS = ("unit", "engine", "service", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer, the folder it lives in: `pytest -m unit` (or `pytest tests/unit`) runs one."""
    for item in items:
        layer = next((part for part in Path(str(item.path)).parts if part in LAYERS), None)
        if layer is not None:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding a tiny base and a tiny refiner checkpoint in the original SDXL layout, plus the
    inpaint head, the v2.6 inpaint patch and the upscaler."""
    from foci.dev.synthetic import write_checkpoint

    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    write_checkpoint(checkpoints / "tiny-base.safetensors", size="tiny", kind="base", seed=0)
    write_checkpoint(checkpoints / "tiny-refiner.safetensors", size="tiny", kind="refiner", seed=1)
    # the Input Image models Fooocus's inpaint (v2.6, the default engine) and upscale use, sized for the tiny UNet
    from foci.dev.make_models import (
        FOOOCUS_UPSCALER,
        INPAINT_HEAD,
        INPAINT_PATCHES,
        tiny_unet_channels,
        write_inpaint_head,
        write_inpaint_patch,
        write_tiny_upscaler,
    )

    write_inpaint_head(root / "inpaint" / INPAINT_HEAD, channels=tiny_unet_channels())
    write_inpaint_patch(root / "inpaint" / INPAINT_PATCHES["v2.6"], seed=3)
    write_tiny_upscaler(root / "upscale_models" / FOOOCUS_UPSCALER)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "checkpoints" / "tiny-base.safetensors"


@pytest.fixture(scope="session")
def tiny_refiner(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "checkpoints" / "tiny-refiner.safetensors"


@pytest.fixture(scope="session")
def engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One CPU fp32 engine shared by the end-to-end tests (models stay loaded between tests)."""
    from foci.engine.engine import Engine

    return Engine(models_dir=tiny_models_dir, output_dir=tmp_path_factory.mktemp("outputs"), device="cpu",
                  precision="fp32")
