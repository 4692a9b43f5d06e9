"""Foci beside a peer, in one run: plain diffusers `StableDiffusionXLPipeline` on the same generated checkpoint.

    .venv/bin/python benchmarks/bench_peer.py [--size tiny|full] [--aspect 512*512] [--steps 10]

Each contender runs in its own process (so its peak RSS is its own) on the same single-file checkpoint, prompt,
size and step count:

* ``foci-fp32``: Foci's exact mode (`--precision fp32`), DPM++ 2M SDE Karras with sharpness and ADM guidance;
* ``foci-auto``: Foci's automatic precision (bf16 where the CPU computes it natively, else fp32);
* ``diffusers``: `StableDiffusionXLPipeline.from_single_file(config=...)`, Euler, CFG, fp32.

Printed per contender: load time, generate wall time, per-step time, peak RSS; then each Foci figure as a ratio of
the peer's. No thresholds: the numbers are for the README table. `--size full` writes a 6.9 GB checkpoint first.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("foci-fp32", "foci-auto", "diffusers")
PROMPT = "a photo of a cat on a sofa"


def _write_diffusers_config(folder: Path, size: str) -> None:
    """A diffusers config folder that describes the synthetic checkpoint (what `from_single_file` needs offline)."""
    from diffusers import EulerDiscreteScheduler

    from foci.dev.synthetic import component_configs
    from foci.text.tokenizers import load_sdxl_tokenizers

    configs = component_configs(size, "base")
    for component, config in configs.items():
        (folder / component).mkdir(parents=True, exist_ok=True)
        (folder / component / "config.json").write_text(json.dumps(config))
    tokenizer_l, tokenizer_g = load_sdxl_tokenizers()
    tokenizer_l.save_pretrained(folder / "tokenizer")
    tokenizer_g.save_pretrained(folder / "tokenizer_2")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.35.0",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))


def _run_foci(checkpoint: Path, precision: str, width: int, height: int, steps: int) -> dict[str, float]:
    from foci.engine.engine import Engine
    from foci.models.checkpoint import load_checkpoint
    from foci.task import GenerationTask

    engine = Engine(models_dir=checkpoint.parent.parent, output_dir=checkpoint.parent.parent / "out",
                    precision=precision)
    plan = engine.plan()
    task = GenerationTask(prompt=PROMPT, base_model=checkpoint.name, aspect_ratio=f"{width}*{height}", steps=steps,
                          image_number=1, seed=1, styles=[])
    started = time.perf_counter()
    load_checkpoint(checkpoint, device=plan.device, dtype=plan.unet_dtype)  # what a cold load costs
    load = time.perf_counter() - started
    marks: list[float] = []
    started = time.perf_counter()
    engine.generate(task, save=False, on_progress=lambda _event: marks.append(time.perf_counter()))
    wall = time.perf_counter() - started
    return {"load_s": load, "wall_s": wall, "step_s": (marks[-1] - marks[0]) / max(len(marks) - 1, 1),
            "device": f"{plan.device.type} {str(plan.unet_dtype).removeprefix('torch.')}"}


def _run_diffusers(checkpoint: Path, config: Path, width: int, height: int, steps: int) -> dict[str, float]:
    import torch
    from diffusers import StableDiffusionXLPipeline

    started = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_single_file(str(checkpoint), config=str(config), local_files_only=True,
                                                      torch_dtype=torch.float32)
    load = time.perf_counter() - started
    marks: list[float] = []

    def on_step(_pipe, _index, _timestep, kwargs):
        marks.append(time.perf_counter())
        return kwargs

    started = time.perf_counter()
    pipe(PROMPT, width=width, height=height, num_inference_steps=steps, guidance_scale=4.0,
         generator=torch.Generator().manual_seed(1), callback_on_step_end=on_step)
    wall = time.perf_counter() - started
    return {"load_s": load, "wall_s": wall, "step_s": (marks[-1] - marks[0]) / max(len(marks) - 1, 1),
            "device": "cpu float32"}


def _worker(args: argparse.Namespace) -> int:
    width, height = (int(v) for v in args.aspect.split("*"))
    checkpoint = Path(args.checkpoint)
    if args.worker == "diffusers":
        result = _run_diffusers(checkpoint, Path(args.config_dir), width, height, args.steps)
    else:
        result = _run_foci(checkpoint, args.worker.removeprefix("foci-"), width, height, args.steps)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--aspect", default="512*512")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)

    from foci.dev.synthetic import write_checkpoint

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "models" / "checkpoints" / f"peer-{args.size}.safetensors"
        checkpoint.parent.mkdir(parents=True)
        write_checkpoint(checkpoint, size=args.size, kind="base", seed=0)
        config = Path(tmp) / "diffusers-config"
        _write_diffusers_config(config, args.size)
        cpu_started, wall_started = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime, time.perf_counter()
        for contender in CONTENDERS:
            done = subprocess.run([sys.executable, __file__, "--worker", contender, "--checkpoint", str(checkpoint),
                                   "--config-dir", str(config), "--aspect", args.aspect, "--steps", str(args.steps)],
                                  capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                print(f"{contender}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[contender] = json.loads(lines[-1].removeprefix("RESULT "))
        cpu_wall = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu_started) / (
            time.perf_counter() - wall_started)

    print(f"{args.size} checkpoint, {args.aspect}, {args.steps} steps; children's user-cpu/wall {cpu_wall:.2f}")
    print(f"{'contender':<11} {'precision':<16} {'load s':>8} {'wall s':>8} {'step ms':>9} {'peak RSS MiB':>13}")
    for name, r in results.items():
        print(f"{name:<11} {r['device']:<16} {r['load_s']:8.2f} {r['wall_s']:8.2f} {r['step_s'] * 1000:9.1f} "
              f"{r['peak_rss_mb']:13.0f}")
    peer = results["diffusers"]
    for name in ("foci-fp32", "foci-auto"):
        r = results[name]
        ratios = {key: r[key] / peer[key] for key in ("load_s", "wall_s", "step_s", "peak_rss_mb")}
        print(f"{name} / diffusers: load {ratios['load_s']:.2f}x, wall {ratios['wall_s']:.2f}x, "
              f"per step {ratios['step_s']:.2f}x, peak RSS {ratios['peak_rss_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
