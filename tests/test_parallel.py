"""Several processes on gloo, through torchrun as a user starts them: DDP and FSDP2 compute what one
process computes on the same global batch, and a sharded checkpoint resumes on another number of
processes. Also the pieces of a step that never waits for the device: the fused optimizer's skip
of a non-finite update, compiling blocks and falling back."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ablate.config import ModelConfig, OptimConfig
from ablate.model import Transformer
from ablate.train.devices import compile_blocks, is_compiled, uncompile_blocks
from ablate.train.optimizer import build_optimizer, step_unless_not_finite

from conftest import cli_in_process, rewound, run_cli, tiny_overrides

COMMON = ("train.tokens=20480", "train.micro_batch=4")  # 20 steps of 16 sequences; checkpoints at 10 and 20
PORTS = iter(range(29531, 29560))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def train(cache_dir: Path, results: Path, name: str, processes: int, *extra: str) -> Path:
    args = tiny_overrides(cache_dir, results, f"run_name={name}", *COMMON, *extra)
    if processes == 1:
        cli_in_process("ablate.train", *args)
    else:
        run_cli("torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={next(PORTS)}",
                "-m", "ablate.train", *args, env={"OMP_NUM_THREADS": "1"})
    return results / "default" / name


def assert_same_curve(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-5), x["step"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3), x["step"]
        if "val_loss" in x:
            assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4), x["step"]


def test_fsdp_and_ddp_on_two_processes_match_one_and_sharded_checkpoints_resume_on_another_count(
        cache_dir, tmp_path):
    first = tmp_path / "first"
    one = train(cache_dir, first, "one", 1, "train.parallel=fsdp")
    ddp = train(cache_dir, first, "ddp", 2)
    fsdp = train(cache_dir, first, "fsdp", 2, "train.parallel=fsdp")
    assert summary(ddp)["world_size"] == summary(fsdp)["world_size"] == 2 and summary(one)["world_size"] == 1
    assert len(metrics(one)) == 20
    assert_same_curve(metrics(ddp), metrics(one))
    assert_same_curve(metrics(fsdp), metrics(one))
    # sharded checkpoints: torch.distributed.checkpoint directories, the last two kept
    assert sorted(p.name for p in (fsdp / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]
    assert (fsdp / "checkpoints" / "step_00000020" / "extra.pt").is_file()
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step_00000010.pt", "step_00000020.pt"]

    # saved on 2 processes, resumed on 1; saved on 1, resumed on 2: the same curve to the end
    second = tmp_path / "second"
    down = rewound(fsdp, second, 10)
    train(cache_dir, second, "fsdp", 1, "train.parallel=fsdp")
    up = rewound(one, second, 10)
    train(cache_dir, second, "one", 2, "train.parallel=fsdp")
    for resumed, straight, world in ((down, fsdp, 1), (up, one, 2)):
        s = summary(resumed)
        assert s["status"] == "completed" and s["world_size"] == world
        assert s["attempts"][0]["status"] == "killed" and s["attempts"][0]["step"] == 10  # it did resume
        assert_same_curve(metrics(resumed), metrics(straight))
        assert s["val_loss"] == pytest.approx(summary(straight)["val_loss"], rel=1e-4)

    # a sharded checkpoint is evaluated in one process like any other
    cli_in_process("ablate.evaluate", f"run={fsdp}", "suite=extrapolation")
    provenance = json.loads((fsdp / "eval" / "extrapolation.json").read_text())["provenance"]
    assert provenance["checkpoint"].endswith("step_00000020") and provenance["final"]
    # a sharded model does not read a single-file checkpoint: one line says what to do
    third = tmp_path / "third"
    rewound(ddp, third, 10)
    out = run_cli("torch.distributed.run", "--nproc_per_node=2", f"--master_port={next(PORTS)}", "-m", "ablate.train",
                  *tiny_overrides(cache_dir, third, "run_name=ddp", *COMMON, "train.parallel=fsdp"),
                  env={"OMP_NUM_THREADS": "1"}, check=False)
    assert out.returncode != 0 and "resume it with train.parallel=ddp" in out.stderr


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_changes_nothing(fused):
    """The fused AdamW skips the update on the device (no host sync); the other one reads the flag."""
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=fused or None)
    p.grad = torch.full((3,), float("nan"))
    step_unless_not_finite(opt, torch.isfinite(p.grad).all())
    assert torch.equal(p.detach(), torch.ones(3))
    assert not opt.state or float(opt.state[p]["step"]) == 0  # the step count is not advanced either
    p.grad = torch.ones(3)
    step_unless_not_finite(opt, torch.isfinite(p.grad).all())
    assert float(opt.state[p]["step"]) == 1 and (p.detach() < 1).all()


def test_fused_adamw_matches_the_default_on_the_model():
    cfg = ModelConfig(dim=32, n_layers=2, vocab_size=128, max_seq_len=16)
    models = [Transformer(cfg) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [build_optimizer(m, OptimConfig(), fused=f) for m, f in zip(models, (False, True))]
    assert opts[1].defaults["fused"] and not opts[0].defaults.get("fused")
    x = torch.randint(0, 128, (2, 16))
    for _ in range(3):
        for m, o in zip(models, opts):
            m(x).float().logsumexp(-1).mean().backward()
            o.step()
            o.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_blocks_compile_where_asked_keep_their_names_and_uncompile():
    cfg = ModelConfig(dim=32, n_layers=2, vocab_size=128, max_seq_len=16)
    model = Transformer(cfg)
    names = list(model.state_dict())
    assert not compile_blocks(model, "auto", torch.device("cpu")) and not is_compiled(model)  # auto: CUDA only
    assert not compile_blocks(model, False, torch.device("cuda"))
    x = torch.randint(0, 128, (2, 16))
    eager = model(x)
    assert compile_blocks(model, True, torch.device("cpu")) and is_compiled(model)
    assert list(model.state_dict()) == names
    torch.testing.assert_close(model(x), eager, rtol=1e-4, atol=1e-4)
    uncompile_blocks(model)
    assert not is_compiled(model) and torch.equal(model(x), eager)


def test_reading_the_device_every_few_steps_writes_the_same_run(cache_dir, tmp_path, monkeypatch):
    """On a GPU the loop reads losses every train.log_every steps, not every step: forced here on
    the CPU (read every 7 steps besides the log lines every 10), the metrics, the spike counts and
    the divergence are those of reading every step."""
    import ablate.train as training
    from ablate.cli import compose_root
    from ablate.config import RunConfig
    from ablate.run.lifecycle import for_train

    class EveryFewSteps(training.Runner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.read_every = 7

    def run(name: str, *extra: str) -> Path:
        overrides = tiny_overrides(cache_dir, tmp_path, "train.log_every=10", *extra)
        cfg = RunConfig.from_dict({**compose_root(overrides), "run_name": name})
        training.train(for_train(cfg))
        return tmp_path / "default" / name

    plain = run("plain")
    nan_plain = run("nan_plain", "optim.lr=1e6", "optim.grad_clip=0")
    monkeypatch.setattr(training, "Runner", EveryFewSteps)
    deferred = run("deferred")
    nan_deferred = run("nan_deferred", "optim.lr=1e6", "optim.grad_clip=0")

    def numbers(rows):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]

    assert numbers(metrics(deferred)) == numbers(metrics(plain)) and len(metrics(plain)) == 4
    a, b = summary(deferred), summary(plain)
    for key in ("train_loss", "val_loss", "loss_spikes", "grad_spikes", "step"):
        assert a[key] == b[key], key
    a, b = summary(nan_deferred), summary(nan_plain)
    assert a["status"] == b["status"] == "diverged" and a["diverged_at_step"] == b["diverged_at_step"] not in (7, 10)
    assert numbers(metrics(nan_deferred)) == numbers(metrics(nan_plain))


def test_gpu_bench_runs_its_code_path_on_a_cpu():
    """bench/gpu_train.py's GPU figures need a GPU; its step, both models and the table run here."""
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run([sys.executable, "bench/gpu_train.py", "--device", "cpu", "--sizes", "tiny", "--steps", "2",
                          "--rounds", "2", "--warmup", "1", "--seq", "64", "--vocab", "512", "--no-compile",
                          "--peak-tflops", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("tiny ")]
    assert [r[1] for r in rows] == ["ablate", "transformers", "ablate"]
    assert rows[0][2] == rows[1][2]  # the same parameter count: the same model
    assert rows[0][4].endswith("%") and rows[2][-2] == "transformers:" and float(rows[2][-1].rstrip("x")) > 0
