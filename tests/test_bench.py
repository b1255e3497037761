"""The scripts for a GPU node: bench/gpu_check.sh runs every step at toy sizes on a CPU (its GPU
figures need a GPU), and bench/offline_wheels.py reads ablate's dependency closure from this
environment's metadata."""

import importlib.util
import os
import re
import subprocess
import sys

from conftest import ROOT


def _offline_wheels():
    spec = importlib.util.spec_from_file_location("offline_wheels", ROOT / "bench" / "offline_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_closure_is_what_ablate_requires_with_the_asked_extras(tmp_path):
    wheels = _offline_wheels()
    plain = wheels.closure("ablate", set(), "3.12")
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "lm-eval", "torch"} <= set(plain)
    assert "pytest" not in plain and "wandb" not in plain  # extras only when asked for
    assert {"pytest", "wandb"} <= set(wheels.closure("ablate", {"dev"}, "3.12"))
    node = tmp_path / "node.txt"
    node.write_text("# pip list --format=freeze\nomegaconf==2.0.0\nHydra_Core\ntorch==2.11.0+cu130\n")
    assert wheels.have(node) == {"omegaconf": "2.0.0", "hydra-core": None, "torch": "2.11.0+cu130"}


def test_gpu_check_runs_every_step_on_a_cpu(tmp_path):
    out = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    steps = re.findall(r"^(\w+) +\d+s  (.*)$", summary, re.M)
    assert steps == [("gpu", "ok"), ("bench_train", "ok"),
                     ("bench_flex", "skipped: flex_attention's backward needs CUDA"),
                     ("train", "ok"), ("train", "ok"), ("resume", "ok"), ("eval", "ok")], summary
    assert re.search(r"^  rope +completed +cpu", summary, re.M) and re.search(r"^  gemma2 +completed", summary, re.M)
    assert re.search(r"resumed completed after \['interrupted at step \d+'\]", summary)
    assert "  evaluated on cpu\n" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_train.log", "eval.log", "gpu.log", "resume.log",
                                                          "summary.txt", "train.log"]
