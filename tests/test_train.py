"""Training through the real entry points: falling loss, exact resume after SIGKILL, SIGTERM
checkpoints, divergence, refusing a different config, skipping completed runs (several processes:
test_parallel.py)."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ablate.config import RunConfig
from ablate.model import Transformer
from ablate.naming import run_name
from ablate.train.optimizer import build_optimizer, lr_at

from conftest import ROOT, cli_in_process, tiny_overrides

TIMING = ("tokens_per_s", "elapsed_s")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_trains_with_falling_loss(cache_dir, tmp_path):
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=tiny"))
    run = tmp_path / "default" / "tiny"
    s = summary(run)
    assert s["status"] == "completed" and s["step"] == s["steps_total"] == 40 and s["tokens_seen"] == 40960
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert rows[-1]["loss"] < 0.75 * rows[0]["loss"]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 4 and vals[-1] < vals[0] and math.isclose(s["val_loss"], vals[-1])
    assert s["params"] == Transformer(RunConfig.from_dict(
        {"model": _yaml(run / "config.yaml")["model"]}).model).num_parameters()
    assert s["axes"]["position"] == "rope" and s["axes"]["attention"] == "mha" and s["flops_per_token"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000030.pt", "step_00000040.pt"]
    # started again: completed runs are skipped, nothing is rewritten
    before = (run / "metrics.jsonl").read_text()
    out = cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=tiny"))
    assert "already completed" in out.stderr + out.stdout and (run / "metrics.jsonl").read_text() == before


def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def test_resume_after_sigkill_is_bit_exact(cache_dir, tmp_path):
    extra = ("train.tokens=122880", "train.checkpoint_every=20")  # 120 steps
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=straight", *extra))
    args = tiny_overrides(cache_dir, tmp_path, "run_name=killed", *extra)
    proc = subprocess.Popen([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "default" / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpt / "step_00000040.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = tmp_path / "default" / "killed"
    assert summary(killed)["status"] == "running", "the kill must land mid-run"
    cli_in_process("ablate.train", *args)
    straight = tmp_path / "default" / "straight"
    assert without_timing(metrics(killed)) == without_timing(metrics(straight))
    a, b = summary(killed), summary(straight)
    assert a["status"] == "completed" and (a["train_loss"], a["val_loss"]) == (b["train_loss"], b["val_loss"])


def test_sigterm_checkpoints_exits_and_resumes(cache_dir, tmp_path):
    args = tiny_overrides(cache_dir, tmp_path, "run_name=term", "train.tokens=204800", "train.checkpoint_every=1000")
    proc = subprocess.Popen([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    run = tmp_path / "default" / "term"
    while not (run / "metrics.jsonl").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    s = summary(run)
    assert s["status"] == "interrupted" and 0 < s["step"] < 200
    name = f"step_{s['step']:08d}"
    assert (run / "checkpoints" / f"{name}.pt").exists()  # written on the signal, off schedule
    # an unfinished run has no final model: ablate-eval says so, and measures a checkpoint only when named
    out = cli_in_process("ablate.evaluate", f"run={run}", "suite=extrapolation", check=False)
    assert out.returncode == 2 and f"is interrupted at step {s['step']} of 200" in out.stderr
    assert f"checkpoint={name}.pt" in out.stderr and not (run / "eval").exists()
    out = cli_in_process("ablate.evaluate", f"run={run}", f"checkpoint={name}.pt", "suite=extrapolation")
    assert "not the final model" in out.stderr
    early = json.loads((run / "eval" / name / "extrapolation.json").read_text())
    assert early["provenance"]["step"] == s["step"] and not early["provenance"]["final"]
    cli_in_process("ablate.train", *args)
    assert summary(run)["status"] == "completed" and [r["step"] for r in metrics(run)] == list(range(1, 201))
    # the evaluation of the interrupted model is listed as stale, never reported next to the final loss
    out = cli_in_process("ablate.report", f"path={run.parent}")
    assert f"eval/{name}/extrapolation.json: it measured step {s['step']}; the run ended at step 200" in out.stderr
    assert "extrapolation" not in (run.parent / "report" / "table.csv").read_text()


def test_divergence_stops_and_keeps_last_good_checkpoint(cache_dir, tmp_path):
    args = tiny_overrides(cache_dir, tmp_path, "run_name=nan", "optim.lr=1e6", "optim.grad_clip=0",
                          "train.checkpoint_every=2")
    cli_in_process("ablate.train", *args)
    run = tmp_path / "default" / "nan"
    s = summary(run)
    assert s["status"] == "diverged" and s["diverged_at_step"] == s["step"] and s["step"] < 40
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved and int(saved[-1][5:13]) < s["diverged_at_step"]
    state = torch.load(run / "checkpoints" / saved[-1], weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert metrics(run)[-1]["loss"] in ("nan", "inf")
    # started again (a re-run sweep, a requeue): the run stays diverged, its record untouched
    before = (run / "metrics.jsonl").read_text()
    out = cli_in_process("ablate.train", *args)
    assert "stays diverged" in out.stdout + out.stderr
    assert (run / "metrics.jsonl").read_text() == before and summary(run) == s
    plan = cli_in_process("ablate.train", "-m", *args, "--plan")
    assert "diverged (kept)" in plan.stdout and "to run: 0 jobs" in plan.stdout
    # a retry when asked for: from the last good checkpoint, every attempt kept
    cli_in_process("ablate.train", *args, "train.retry_diverged=true")
    again = summary(run)
    assert again["attempts"] == [{"status": "diverged", "step": s["step"], "diverged_at_step": s["diverged_at_step"]}]
    assert (run / "metrics.attempt1.jsonl").read_text() == before
    assert again["status"] == "diverged" and again["diverged_at_step"] == s["diverged_at_step"]  # bit-exact on CPU


def test_a_different_config_refuses_the_run_dir(cache_dir, tmp_path):
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=same", "train.tokens=10240"))
    run = tmp_path / "default" / "same"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=same", "train.tokens=10240",
                                                         "model.n_layers=3"), check=False)
    assert out.returncode != 0
    assert "model.n_layers: 2 -> 3" in out.stderr and "run_name=" in out.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "train.log"} == {
        k: v for k, v in before.items() if k != "train.log"}


def test_bad_config_fails_before_anything_is_written(cache_dir, tmp_path):
    out = cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=bad",
                                                         "train.batch_tokens=1000"), check=False)
    assert out.returncode != 0 and "train.batch_tokens=1000: must be a multiple of seq_len=64" in out.stderr
    assert not (tmp_path / "default" / "bad" / "config.yaml").exists()


def test_cfg_job_shows_the_composed_config():
    out = cli_in_process("ablate.train", "model=gemma2", "model/position=alibi", "--cfg", "job")
    assert "kind: alibi" in out.stdout and "softcap: 50.0" in out.stdout and "tokens: 1500000" in out.stdout


def test_run_names_say_the_variant_and_seed():
    choices = {"model": "gemma2", "model/position": "alibi", "model/attention": "mqa", "model/norm": "rmsnorm",
               "model/placement": "sandwich", "model/mlp": "geglu", "data": "synthetic"}
    assert run_name(choices, [], 2) == "gemma2-alibi-mqa-rmsnorm-sandwich-geglu-s2"
    overrides = ["model.dim=512", "model/position=alibi", "seed=0", "train.progress=bar", "model.dim=256"]
    assert run_name({**choices, "data": "tinystories"}, overrides, 0) == \
        "gemma2-alibi-mqa-rmsnorm-sandwich-geglu-tinystories-dim=256-s0"


def test_automatic_run_dir(cache_dir, tmp_path):
    args = tiny_overrides(cache_dir, tmp_path, "train.tokens=10240", "model/position=alibi", "seed=3")
    cli_in_process("ablate.train", *args)
    (run,) = (tmp_path / "default").iterdir()
    # the preset and axes, then overrides; too long, the earliest give way to a hash of the whole
    assert run.name == "default-alibi-mha-rmsnorm-pre-swiglu-~2ab0afe1-warmup_steps=5-precision=fp32-s3"
    assert summary(run)["seed"] == 3


def test_weight_decay_spares_norms_biases_and_embeddings():
    cfg = RunConfig.from_dict({"model": {"position": {"kind": "learned"}, "attention": {"qkv_bias": True}}})
    model = Transformer(cfg.model)
    decay, no_decay = build_optimizer(model, cfg.optim).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 and "embed" not in names[id(p)] and "table" not in names[id(p)] for p in decay["params"])
    assert {"tok_embed.weight", "position.table.weight", "final_norm.weight", "blocks.0.attn.wqkv.bias"} <= {
        names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_output_matrix_is_decayed_alike_tied_or_not(decay_embeddings):
    """Tying changes one thing: the output matrix is decayed as the token embedding is, whether it
    is that embedding (tied) or a head of its own (untied)."""
    def decay_of(tied: bool) -> dict[str, float]:
        cfg = RunConfig.from_dict({"model": {"tie_embeddings": tied}, "optim": {"decay_embeddings": decay_embeddings}})
        model = Transformer(cfg.model)
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: g["weight_decay"] for g in build_optimizer(model, cfg.optim).param_groups
                for p in g["params"]}

    tied, untied = decay_of(True), decay_of(False)
    expected = 0.1 if decay_embeddings else 0.0
    assert tied["tok_embed.weight"] == untied["tok_embed.weight"] == untied["head.weight"] == expected
    assert {k: v for k, v in untied.items() if k != "head.weight"} == tied


def test_lr_schedule():
    cfg = RunConfig.from_dict({"optim": {"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1}})
    assert lr_at(0, 110, cfg) == pytest.approx(0.1) and lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.55) and lr_at(110, 110, cfg) == pytest.approx(0.1)
    cfg.optim.schedule = "linear"
    assert lr_at(60, 110, cfg) == pytest.approx(0.55) and lr_at(35, 110, cfg) == pytest.approx(0.775)


def test_bf16_autocast_on_cpu(cache_dir, tmp_path):
    for precision in ("bf16", "fp32"):
        cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, f"run_name={precision}",
                                                       f"train.precision={precision}", "train.tokens=10240"))
    bf16, fp32 = summary(tmp_path / "default" / "bf16"), summary(tmp_path / "default" / "fp32")
    assert bf16["status"] == "completed" and math.isfinite(bf16["val_loss"])
    assert (bf16["precision"], fp32["precision"]) == ("bf16", "fp32")  # what the run used, not what was asked
    first = [metrics(tmp_path / "default" / p)[0]["loss"] for p in ("bf16", "fp32")]
    assert first[0] != first[1] and first[0] == pytest.approx(first[1], rel=0.02)  # bf16 arithmetic, same model


def test_prepare_then_train_with_a_tokenizer_file(cache_dir, tmp_path):
    out = cli_in_process("ablate.train.prepare_data", *tiny_overrides(cache_dir, tmp_path))
    assert "training and 2,048 validation tokens" in out.stdout
    from ablate.data.synthetic import documents
    from ablate.data.tokens import train_bpe

    tokenizer_json = tmp_path / "small" / "tokenizer.json"  # 300 ids, where data.vocab_size asks BPE for 512
    tokenizer_json.parent.mkdir()
    train_bpe(documents(0, 20_000), 300, tokenizer_json)
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=tokfile", "train.tokens=10240",
                                                   f"data.tokenizer={tokenizer_json}"))
    run = tmp_path / "default" / "tokfile"
    assert summary(run)["status"] == "completed"
    assert _yaml(run / "config.yaml")["model"]["vocab_size"] == 320  # 300, padded to a multiple of 64
    assert (run / "tokenizer.json").read_text() == tokenizer_json.read_text()


def test_unreadable_checkpoint_is_moved_aside_and_the_one_before_used(cache_dir, tmp_path):
    args = tiny_overrides(cache_dir, tmp_path, "run_name=torn", "train.tokens=204800", "train.checkpoint_every=20",
                          "train.keep_checkpoints=3")
    proc = subprocess.Popen([sys.executable, "-m", "ablate.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run = tmp_path / "default" / "torn"
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step_00000040.pt").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    saved = sorted((run / "checkpoints").glob("step_*.pt"))
    assert summary(run)["status"] == "interrupted" and len(saved) >= 2
    torn = saved[-1]
    torn.write_bytes(torn.read_bytes()[:1000])  # a copy cut short
    out = cli_in_process("ablate.train", *args)
    log = out.stdout + out.stderr
    assert "moved aside" in log and f"resuming {run} from step {int(saved[-2].stem[5:])}" in log
    assert (torn.parent / f"{torn.name}.unreadable").exists()  # kept, never deleted
    assert summary(run)["status"] == "completed" and [r["step"] for r in metrics(run)] == list(range(1, 201))
    # a corrupt final checkpoint: every command that reads it says so in one line
    (run / "checkpoints" / "step_00000200.pt").write_bytes(b"not a checkpoint")
    for module, extra in (("ablate.evaluate", ["suite=extrapolation"]), ("ablate.evaluate.export", [])):
        out = cli_in_process(module, f"run={run}", *extra, check=False)
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert len(errors) == 1 and "step_00000200.pt is not a readable checkpoint" in errors[0]


def test_integral_floats_are_accepted_for_counts():
    from ablate.cli import compose_root
    from ablate.registry import ConfigError

    cfg = RunConfig.from_dict(compose_root(["train.tokens=5e6", "model.dim=512", "train.batch_tokens=1.6384e4"]))
    assert cfg.train.tokens == 5_000_000 and isinstance(cfg.train.tokens, int) and cfg.train.batch_tokens == 16384
    with pytest.raises(ConfigError, match=r"train.tokens=1.5: expected int"):
        RunConfig.from_dict(compose_root(["train.tokens=1.5"]))


def test_precision_is_used_and_recorded(cache_dir, tmp_path):
    """train.precision: bf16 autocast changes the numbers and says so in summary.json; auto picks
    bf16 exactly where the CPU computes it natively (fp32 elsewhere)."""
    from ablate.train.devices import cpu_has_native_bf16

    losses, used = {}, {}
    for precision in ("fp32", "bf16", "auto"):
        cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "train.tokens=4096",
                                                       f"run_name={precision}", f"train.precision={precision}"))
        used[precision] = summary(tmp_path / "default" / precision)["precision"]
        losses[precision] = [m["loss"] for m in metrics(tmp_path / "default" / precision)]
    assert used["fp32"] == "fp32" and used["bf16"] == "bf16" and losses["fp32"] != losses["bf16"]
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert used["auto"] == expected and losses["auto"] == losses[expected]


def test_mfu_is_logged_against_a_stated_peak_and_never_guessed_on_cpu(cache_dir, tmp_path):
    """MFU = FLOPs/token x tokens/s / peak, in metrics.jsonl and summary.json, wherever a peak is
    known (the table of GPUs, or train.peak_tflops); none on a CPU without one."""
    from ablate.train.devices import lookup, mfu

    assert lookup("NVIDIA H100 80GB HBM3") == 989.4 and lookup("NVIDIA H100 PCIe") == 756.0
    assert lookup("NVIDIA A100-SXM4-40GB") == 312.0 and lookup("NVIDIA GeForce GTX 1080") is None
    assert mfu(6e9, 1000.0, 989.4, world_size=2) == pytest.approx(6e12 / (2 * 989.4e12))
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "train.tokens=4096", "run_name=peak",
                                                   "train.peak_tflops=0.05"))
    s = summary(tmp_path / "default" / "peak")
    assert s["peak_tflops"] == 0.05 and s["mfu"] == pytest.approx(s["flops_per_token"] * s["tokens_per_s"] / 0.05e12)
    lines = metrics(tmp_path / "default" / "peak")
    assert all(m["mfu"] == pytest.approx(s["flops_per_token"] * m["tokens_per_s"] / 0.05e12, rel=1e-3) for m in lines)
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "train.tokens=4096", "run_name=cpu"))
    plain = summary(tmp_path / "default" / "cpu")
    assert plain["peak_tflops"] is None and plain["mfu"] is None
    assert all("mfu" not in m for m in metrics(tmp_path / "default" / "cpu"))
