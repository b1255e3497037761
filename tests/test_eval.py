"""Evaluation: AblateLM against lm-eval's own HF backend, ablate-eval's suites and files, local
data for lm-eval's built-in tasks, extrapolation, export, and the errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.config import EvalConfig, ModelConfig, PositionConfig
from ablate.evaluate import extrapolation, probe_dir, task_manager
from ablate.lm import AblateLM, RunError, load_run
from ablate.model import Transformer
from ablate.registry import ConfigError

from conftest import ROOT, run_cli, tiny_overrides

SHARED = ROOT.parent / "shared" / "data" / "eval"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """A tiny default (Llama-family) run, trained for 80 steps, and exported."""
    results = tmp_path_factory.mktemp("results")
    run_cli("ablate.train", *tiny_overrides(cache_dir, results, "run_name=tiny", "train.tokens=81920"))
    run = results / "default" / "tiny"
    run_cli("ablate.export", f"run={run}")
    return run


def _loglikelihoods(samples: list[dict]) -> list[float]:
    values = []
    for sample in samples:
        for resp in sample["resps"]:
            first = resp[0]
            values.append(first[0] if isinstance(first, (list, tuple)) else first)
    return values


def test_parity_with_lm_eval_hf_backend(trained, cache_dir, tmp_path):
    """The exported model under lm-eval's HFLM and the run under AblateLM: the same accuracies and
    per-request log-likelihoods within 1e-4, for multiple-choice, loglikelihood, rolling and
    generation requests."""
    import lm_eval

    probes = probe_dir(str(cache_dir), 1234, 60)
    files = {t: str(probes / f"{n}.jsonl") for t, n in (("ablate_agreement", "agreement"),
                                                        ("ablate_recall", "recall"), ("ablate_copy", "copy"),
                                                        ("ablate_heldout", "heldout"))}
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "copy_gen.yaml").write_text(
        f"task: copy_gen\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {probes / 'copy.jsonl'}}}}}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{continuation}}'\n"
        "generation_kwargs: {until: ['|'], max_gen_toks: 12, do_sample: false}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n")
    tasks = [*files, "copy_gen"]
    manager = task_manager(files, tmp_path)
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[*manager.include_path, str(gen)])
    ours = lm_eval.simple_evaluate(model=AblateLM(run=str(trained), batch_size=16), tasks=tasks,
                                   task_manager=manager, log_samples=True, limit=40, bootstrap_iters=0)
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={trained / 'hf'},dtype=float32",
                                     tasks=tasks, task_manager=manager, log_samples=True, limit=40, batch_size=16,
                                     bootstrap_iters=0, device="cpu")
    for task in files:
        a, b = ours["results"][task], theirs["results"][task]
        metrics = [k for k in a if "," in k and "stderr" not in k]
        assert metrics and all(a[k] == pytest.approx(b[k], rel=1e-4) for k in metrics), (task, a, b)
        la, lb = _loglikelihoods(ours["samples"][task]), _loglikelihoods(theirs["samples"][task])
        assert len(la) == len(lb) >= 40 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-4
    assert ours["results"]["ablate_agreement"]["acc,none"] > 0.5  # it learned something
    gens_a = [s["resps"][0][0] for s in ours["samples"]["copy_gen"]]
    gens_b = [s["resps"][0][0] for s in theirs["samples"]["copy_gen"]]
    assert gens_a == gens_b and any(gens_a)


def test_ablate_eval_writes_lm_eval_results(trained):
    out = run_cli("ablate.evaluate", f"run={trained}", "eval.probe_items=60")
    assert "probes ->" in out.stdout and "extrapolation ->" in out.stdout
    probes = json.loads((trained / "eval" / "probes.json").read_text())
    assert set(probes["results"]) == {"ablate_agreement", "ablate_recall", "ablate_copy", "ablate_heldout"}
    assert 0 <= probes["results"]["ablate_agreement"]["acc,none"] <= 1
    assert probes["results"]["ablate_agreement"]["acc_stderr,none"] > 0  # lm-eval's stderr, kept
    assert "configs" in probes and "versions" in probes and probes["config"]["model"] == "ablate"
    extra = json.loads((trained / "eval" / "extrapolation.json").read_text())
    lengths = [r["seq_len"] for r in extra["results"].values()]
    assert lengths == [32, 64, 128, 256, 512]
    assert all(math.isfinite(r["perplexity,none"]) and r["perplexity_stderr,none"] > 0
               for r in extra["results"].values())


def test_samples_and_custom_task_lists(trained):
    run_cli("ablate.evaluate", f"run={trained}", "tasks=ablate_agreement", "eval.probe_items=60", "eval.limit=10",
            "--samples")
    custom = json.loads((trained / "eval" / "custom.json").read_text())
    assert list(custom["results"]) == ["ablate_agreement"]
    rows = (trained / "eval" / "custom_samples.jsonl").read_text().splitlines()
    assert len(rows) == 10 and json.loads(rows[0])["task"] == "ablate_agreement"


def test_extrapolation_learned_positions_not_applicable():
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=1, max_seq_len=16,
                                    position=PositionConfig(kind="learned"))).eval()
    tokens = np.random.default_rng(0).integers(0, 50, 400).astype(np.uint16)
    out = extrapolation(model, tokens, 16, [0.5, 1, 2, 8], EvalConfig())["results"]
    assert math.isfinite(out["extrapolation_0.5x"]["perplexity,none"])
    assert math.isfinite(out["extrapolation_1x"]["perplexity,none"])
    assert out["extrapolation_2x"]["perplexity,none"] is None
    assert out["extrapolation_8x"]["not_applicable"] == "learned positions cover 16 tokens"
    # and the number is what a direct computation gives
    L, n = 16, (400 - 1) // 16
    x = torch.from_numpy(tokens[: n * L + 1].astype(np.int64))
    with torch.no_grad():
        logits = model(torch.stack([x[i * L:i * L + L] for i in range(n)]))
    targets = torch.stack([x[i * L + 1:i * L + L + 1] for i in range(n)])
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1)).item()
    assert out["extrapolation_1x"]["perplexity,none"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_harness_is_lm_eval_command_line(trained, cache_dir, tmp_path):
    probes = probe_dir(str(cache_dir), 1234, 60)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mini_agreement.yaml").write_text(
        f"include: {ROOT / 'ablate' / 'tasks' / 'ablate_agreement.yaml'}\ntask: mini_agreement\n"
        f"dataset_kwargs: {{data_files: {{test: {probes / 'agreement.jsonl'}}}}}\n")
    run_cli("ablate.harness", "--model", "ablate", "--model_args", f"run={trained}", "--tasks", "mini_agreement",
            "--include_path", str(tmp_path / "tasks"), "--limit", "8", "--output_path", str(tmp_path / "out"))
    (result,) = (tmp_path / "out").rglob("results*.json")
    assert "mini_agreement" in json.loads(result.read_text())["results"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/eval")
def test_local_files_for_lm_eval_builtin_tasks(trained, tmp_path):
    local = {"lambada_openai": SHARED / "lambada_openai_test.jsonl", "piqa": SHARED / "piqa_validation.jsonl",
             "blimp_anaphor_number_agreement": SHARED / "blimp" / "anaphor_number_agreement.jsonl"}
    args = [f"eval.local_data.{task}={path}" for task, path in local.items()]
    run_cli("ablate.evaluate", f"run={trained}", f"tasks={','.join(local)}", "eval.limit=20", *args)
    results = json.loads((trained / "eval" / "custom.json").read_text())
    for task in local:
        assert results["n-samples"][task]["effective"] == 20
        assert 0 <= results["results"][task]["acc,none"] <= 1
    assert results["configs"]["piqa"]["dataset_path"] == "json"
    assert results["configs"]["piqa"]["validation_split"] == "validation"


def test_errors_name_what_exists(trained, tmp_path):
    with pytest.raises(ConfigError, match=r"eval task='hellaswg': unknown .*valid: hellaswag"):
        from ablate.evaluate import check_tasks

        check_tasks(["hellaswg"])
    with pytest.raises(RunError, match=f"runs in {trained.parent}: tiny"):
        load_run(trained.parent / "tinyy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a trained run: config.yaml, tokenizer.json missing"):
        load_run(tmp_path / "empty")
    with pytest.raises(RunError, match="has: step_00000070.pt, step_00000080.pt"):
        load_run(trained, trained / "checkpoints" / "step_00000010.pt")
    out = run_cli("ablate.evaluate", f"run={trained}", "suite=bigsciense", check=False)
    assert out.returncode == 2 and "eval='bigsciense': no such option" in out.stderr and "bigscience" in out.stderr
    out = run_cli("ablate.evaluate", f"run={trained}", "eval.local_data.piqa=/no/such.jsonl", "tasks=piqa",
                  check=False)
    assert out.returncode == 2 and "eval.local_data.piqa='/no/such.jsonl': no such file" in out.stderr


def test_export_only_what_transformers_implements(cache_dir, tmp_path):
    run_cli("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=alibi", "model/position=alibi",
                                            "train.tokens=1024"))
    out = run_cli("ablate.export", f"run={tmp_path / 'default' / 'alibi'}", check=False)
    assert out.returncode == 2 and "no transformers class implements it" in out.stderr
    assert "llama: position.kind is 'alibi', needs 'rope'" in out.stderr


def test_train_then_evaluate_in_one_job(cache_dir, tmp_path):
    run_cli("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=both", "train.tokens=4096",
                                            "train.eval_at_end=true", "eval=probes", "eval.probe_items=40"))
    assert (tmp_path / "default" / "both" / "eval" / "probes.json").exists()
