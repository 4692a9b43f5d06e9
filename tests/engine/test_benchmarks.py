"""The benchmark scripts keep running (their numbers are printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sampling_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sampling.py"), "--aspect", "64*64",
                           "--steps", "2", "--precision", "fp32"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sampling-loop overhead over raw UNet time" in done.stdout
    assert "peak RSS" in done.stdout


def test_peer_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_peer.py"), "--aspect", "64*64",
                           "--steps", "2"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "foci-fp32 / diffusers:" in done.stdout and "foci-auto / diffusers:" in done.stdout


def test_input_image_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_input_image.py"), "--input", "64x64",
                           "--steps", "1", "--device", "cpu", "--precision", "fp32", "--modes", "inpaint"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "inpaint / text-to-image:" in done.stdout
