"""Overhead of Vary, Upscale (2x) and Inpaint over plain text-to-image of the same output size, in one run.

    .venv/bin/python benchmarks/bench_input_image.py [--models DIR] [--steps 4] [--device auto]

Without ``--models`` a tiny models folder is written first (``foci dev make-models --tiny``); with a real models
folder (SDXL checkpoint, ``fooocus_upscaler_s409985e5.bin``, the inpaint head and patch) the numbers are the ones
users see. Each mode runs once to warm up and is then timed; printed as seconds and as a ratio to text-to-image
at the same sampled size with the same step count (no thresholds).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from foci.dev.make_models import write_tiny_models
from foci.engine.engine import Engine
from foci.task import GenerationTask


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _timed(engine: Engine, task: GenerationTask) -> float:
    engine.generate(task, save=False)  # warm-up: models, upscaler, head loaded
    start = time.perf_counter()
    engine.generate(task, save=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="models folder (default: a tiny one written now)")
    parser.add_argument("--model", default=None, help="checkpoint name in the folder (default: the first)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--input", default="1024x768", help="input image size WIDTHxHEIGHT")
    parser.add_argument("--modes", default="vary,upscale,inpaint", help="comma-separated: vary, upscale, inpaint")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        models = args.models
        if models is None:
            models = Path(scratch) / "models"
            write_tiny_models(models)
        engine = Engine(models_dir=models, output_dir=Path(scratch) / "outputs", device=args.device,
                        precision=args.precision)
        model = args.model or engine.folders.list_files("checkpoints")[0].as_posix()
        width, height = (int(side) for side in args.input.lower().split("x"))
        picture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = engine.inputs.put_bytes(_png(picture))
        mask = np.zeros(picture.shape[:2], dtype=np.uint8)
        mask[height // 4: height // 2, width // 4: width * 3 // 4] = 255
        mask_hash = engine.inputs.put_bytes(_png(mask))
        common = {"prompt": "a cat", "base_model": model, "seed": 1, "image_number": 1, "styles": [],
                  "overwrite_step": args.steps}
        modes = {  # the text-to-image size is the output size of the first run (None) or the sampled size
            "vary (subtle)": {"input_image": image, "uov_method": "Vary (Subtle)"},
            "upscale (2x)": {"input_image": image, "uov_method": "Upscale (2x)"},
            "inpaint": {"input_image": image, "inpaint_mask": mask_hash},
        }
        print(f"device {engine.plan().describe()}, {args.steps} steps, models {models}")
        chosen = [name for name in modes if name.split()[0] in args.modes.split(",")]
        for name, fields in ((name, modes[name]) for name in chosen):
            task = GenerationTask(**common, **fields)
            seconds = _timed(engine, task)
            record = engine.generate(task, save=False)[0].record
            aspect = f"{record.width}*{record.height}"  # the sampled size
            plain = _timed(engine, GenerationTask(**common, aspect_ratio=aspect))
            print(f"{name:14s} {seconds:7.2f} s   text-to-image {aspect:>9s} {plain:7.2f} s   "
                  f"{name} / text-to-image: {seconds / plain:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
