"""Evaluation: AblateLM against lm-eval's own HF backend, ablate-eval's suites and files, local
data for lm-eval's built-in tasks, extrapolation, export, and the errors."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ablate
from ablate.config import EvalConfig, ModelConfig, PositionConfig
from ablate.evaluate import extrapolation, probe_dir, task_manager
from ablate.evaluate.lm import AblateLM, RunError, load_run
from ablate.model import Transformer
from ablate.registry import ConfigError
from ablate.run.rundir import RunDir

from conftest import ROOT, cli_in_process, tiny_overrides

SHARED = ROOT.parent / "shared" / "data" / "eval"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """A tiny default (Llama-family) run, trained for 80 steps, and exported."""
    results = tmp_path_factory.mktemp("results")
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, results, "run_name=tiny", "train.tokens=81920"))
    run = results / "default" / "tiny"
    cli_in_process("ablate.evaluate.export", f"run={run}")
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
                                                        ("ablate_nesting", "nesting"), ("ablate_heldout", "heldout"))}
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "copy_gen.yaml").write_text(
        f"task: copy_gen\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {probes / 'copy.jsonl'}}}}}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{continuation}}'\n"
        "generation_kwargs: {until: ['|'], max_gen_toks: 12, do_sample: false}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n")
    tasks = [*files, "copy_gen"]
    manager = task_manager(files)
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
    # it learned something: uniform over the language's ~30 characters would be 4.9 bits per byte
    assert ours["results"]["ablate_heldout"]["bits_per_byte,none"] < 2.5
    gens_a = [s["resps"][0][0] for s in ours["samples"]["copy_gen"]]
    gens_b = [s["resps"][0][0] for s in theirs["samples"]["copy_gen"]]
    assert gens_a == gens_b and any(gens_a)


def test_ablate_eval_writes_lm_eval_results(trained):
    out = cli_in_process("ablate.evaluate", f"run={trained}", "eval.probe_items=60")
    assert "probes ->" in out.stdout and "extrapolation ->" in out.stdout
    probes = json.loads((trained / "eval" / "probes.json").read_text())
    assert set(probes["results"]) == {"ablate_agreement", "ablate_length", "ablate_nesting", "ablate_recall",
                                      "ablate_copy", "ablate_heldout"}
    assert probes["chance"]["ablate_length"]["acc"] == probes["chance"]["ablate_nesting"]["acc"] == 0.5
    assert 0 <= probes["results"]["ablate_agreement"]["acc,none"] <= 1
    assert probes["results"]["ablate_agreement"]["acc_stderr,none"] > 0  # lm-eval's stderr, kept
    assert "configs" in probes and "versions" in probes and probes["config"]["model"] == "ablate"
    summary = json.loads((trained / "summary.json").read_text())
    p = probes["provenance"]  # which model these numbers describe
    assert p["checkpoint"] == "checkpoints/step_00000080.pt" and p["step"] == summary["step"] == 80
    assert p["tokens"] == summary["tokens_seen"] and p["final"] and p["run_status"] == "completed"
    assert p["config_hash"] == RunDir(trained).config_hash() and p["ablate_version"] == ablate.__version__
    assert p["device"] == "cpu" or (torch.cuda.is_available() and p["device"].startswith("cuda ("))  # auto
    extra = json.loads((trained / "eval" / "extrapolation.json").read_text())
    lengths = [r["seq_len"] for r in extra["results"].values()]
    assert lengths == [32, 64, 128, 256, 512]
    assert all(math.isfinite(r["perplexity,none"]) and r["perplexity_stderr,none"] > 0
               for r in extra["results"].values())


def test_samples_and_custom_task_lists(trained):
    cli_in_process("ablate.evaluate", f"run={trained}", "tasks=ablate_agreement", "eval.probe_items=60",
                   "eval.limit=10", "--samples")
    custom = json.loads((trained / "eval" / "custom.json").read_text())
    assert list(custom["results"]) == ["ablate_agreement"]
    rows = (trained / "eval" / "custom_samples.jsonl").read_text().splitlines()
    assert len(rows) == 10 and json.loads(rows[0])["task"] == "ablate_agreement"


def test_a_run_logged_to_wandb_evaluates_where_wandb_is_missing_outside_a_checkout(trained, tmp_path):
    """`ablate-eval` as a user runs it: in a directory that is no git checkout, where `import wandb`
    fails, on a run that logged to W&B. It evaluates, and prints nothing that is not its own (no
    "fatal: not a git repository" from a library asking git for a commit)."""
    import yaml

    run = tmp_path / "logged"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval", "hf"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["loggers"] = ["jsonl", "wandb"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "block" / "wandb").mkdir(parents=True)
    (tmp_path / "block" / "wandb" / "__init__.py").write_text("raise ImportError('no wandb here')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'block'}{os.pathsep}{ROOT}"}
    where = tmp_path / "elsewhere"
    where.mkdir()
    proc = subprocess.run([sys.executable, "-m", "ablate.evaluate", f"run={run}", "tasks=ablate_agreement",
                           "eval.probe_items=60", "eval.limit=10"], cwd=where, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads((run / "eval" / "custom.json").read_text())["results"]) == ["ablate_agreement"]
    assert "fatal" not in proc.stderr and "not a git repository" not in proc.stderr + proc.stdout


def test_extrapolation_learned_positions_not_applicable():
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=1, max_seq_len=16,
                                    position=PositionConfig(kind="learned"))).eval()
    tokens = np.random.default_rng(0).integers(0, 50, 400).astype(np.uint16)
    out = extrapolation(model, tokens, 16, [0.5, 1, 2, 8], EvalConfig())["results"]
    assert math.isfinite(out["extrapolation_0.5x"]["perplexity,none"])
    assert math.isfinite(out["extrapolation_1x"]["perplexity,none"])
    assert out["extrapolation_2x"]["perplexity,none"] is None
    assert out["extrapolation_8x"]["not_applicable"] == "learned positions were trained on 16 tokens"
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
        f"include: {ROOT / 'ablate' / 'evaluate' / 'tasks' / 'ablate_agreement.yaml'}\ntask: mini_agreement\n"
        f"dataset_kwargs: {{data_files: {{test: {probes / 'agreement.jsonl'}}}}}\n")
    cli_in_process("ablate.evaluate.harness", "--model", "ablate", "--model_args", f"run={trained}", "--tasks",
                   "mini_agreement", "--include_path", str(tmp_path / "tasks"), "--limit", "8", "--output_path",
                   str(tmp_path / "out"))
    (result,) = (tmp_path / "out").rglob("results*.json")
    assert "mini_agreement" in json.loads(result.read_text())["results"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/eval")
def test_local_files_for_lm_eval_builtin_tasks(trained, tmp_path):
    local = {"lambada_openai": SHARED / "lambada_openai_test.jsonl", "piqa": SHARED / "piqa_validation.jsonl",
             "blimp_anaphor_number_agreement": SHARED / "blimp" / "anaphor_number_agreement.jsonl"}
    args = [f"eval.local_data.{task}={path}" for task, path in local.items()]
    cli_in_process("ablate.evaluate", f"run={trained}", f"tasks={','.join(local)}", "eval.limit=20", *args)
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
    assert load_run(trained, "70").step == 70 and not load_run(trained, "step_00000070.pt").final
    assert load_run(trained).final and load_run(trained).checkpoint.name == "step_00000080.pt"
    out = cli_in_process("ablate.evaluate", f"run={trained}", "tasks=ablate_agreemnt", check=False)
    assert out.returncode == 2 and "ablate_agreement" in out.stderr and "Traceback" not in out.stderr
    out = cli_in_process("ablate.evaluate", f"run={trained}", "suite=bigsciense", check=False)
    assert out.returncode == 2 and "eval='bigsciense': no such option" in out.stderr and "bigscience" in out.stderr
    out = cli_in_process("ablate.evaluate", f"run={trained}", "eval.local_data.piqa=/no/such.jsonl", "tasks=piqa",
                         check=False)
    assert out.returncode == 2 and "eval.local_data.piqa='/no/such.jsonl': no such file" in out.stderr
    # a device: a choice, and a GPU only where one is visible; refused before any run is read
    before = sorted(p.name for p in (trained / "eval").iterdir()) if (trained / "eval").exists() else []
    out = cli_in_process("ablate.evaluate", f"run={trained}", "eval.device=gpu", check=False)
    assert out.returncode == 2 and "eval.device='gpu': unknown choice (valid: auto, cpu, cuda)" in out.stderr
    if not torch.cuda.is_available():
        out = cli_in_process("ablate.evaluate", f"run={trained}", "eval.device=cuda", check=False)
        assert out.returncode == 2 and "eval.device='cuda': no CUDA device is visible (valid: auto, cpu)" in out.stderr
    assert (sorted(p.name for p in (trained / "eval").iterdir()) if (trained / "eval").exists() else []) == before


def test_export_only_what_transformers_implements(cache_dir, tmp_path):
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=alibi", "model/position=alibi",
                                                   "train.tokens=1024"))
    out = cli_in_process("ablate.evaluate.export", f"run={tmp_path / 'default' / 'alibi'}", check=False)
    assert out.returncode == 2 and "no transformers class implements it" in out.stderr
    assert "llama: position.kind is 'alibi', needs 'rope'" in out.stderr


def test_train_then_evaluate_in_one_job(cache_dir, tmp_path):
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=both", "train.tokens=4096",
                                                   "train.eval_at_end=true", "eval=probes", "eval.probe_items=40"))
    assert (tmp_path / "default" / "both" / "eval" / "probes.json").exists()


DEADLOCK = """
import multiprocessing, signal, sys, time
# what submitit installs in a Slurm job: SIGTERM is logged and otherwise ignored
signal.signal(signal.SIGTERM, lambda s, f: print("Bypassing signal SIGTERM", flush=True))
from ablate.evaluate import evaluate_run, parse
_, cfg = parse(["tasks=ablate_copy", "eval.probe_items=40"])
evaluate_run(sys.argv[1], cfg)  # ablate_copy's perplexity stderr is bootstrapped by lm-eval in a forked pool
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
worker.start()
time.sleep(0.5)
worker.terminate()  # what the pool's terminate() does to each worker
worker.join(30)
print("worker exit code", worker.exitcode, flush=True)
"""


def test_evaluation_ends_under_a_handler_that_ignores_sigterm(trained):
    """A parent whose SIGTERM handler ignores the signal (submitit's) evaluates with metrics that
    need lm-eval's forked bootstrap pool: the evaluation ends, and a forked worker dies on SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-c", DEADLOCK, str(trained)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("the evaluation hung:\n" + out[-2000:])
    assert proc.returncode == 0, out[-3000:]
    assert f"worker exit code {-signal.SIGTERM}" in out
    copy = json.loads((trained / "eval" / "custom.json").read_text())["results"]["ablate_copy"]
    assert copy["perplexity_stderr,none"] > 0


def _copy_run(run: Path, into: Path) -> Path:
    shutil.copytree(run, into, ignore=shutil.ignore_patterns("eval", "hf"))
    return into


def test_task_index_is_built_once_per_process(trained, tmp_path, monkeypatch):
    """Two runs x two suites evaluated by one ablate-eval: lm-eval's task index is built once."""
    from lm_eval.tasks import TaskManager

    import ablate.evaluate as evaluate

    for name in ("a", "b"):
        _copy_run(trained, tmp_path / "exp" / name)
    built = []
    init = TaskManager.__init__

    def counted(self, *args, **kwargs):
        built.append(kwargs.get("include_path"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(TaskManager, "__init__", counted)
    monkeypatch.setattr(evaluate, "_MANAGERS", {})
    assert evaluate.main(["experiment=exp", f"results_dir={tmp_path}", "suite=probes,extrapolation",
                          "eval.probe_items=40", "eval.limit=5"]) == 0
    assert len(built) == 1
    assert all((tmp_path / "exp" / n / "eval" / f"{suite}.json").exists()
               for n in "ab" for suite in ("probes", "extrapolation"))


def _direct_loglikelihood(model: Transformer, context: list[int], continuation: list[int], L: int) -> float:
    """log p(continuation | context) with a context of L tokens: the continuation in pieces of L,
    each token predicted from the tokens before it in the same forward pass of at most L tokens."""
    seq, total = context + continuation, 0.0
    for a in range(len(context), len(seq), L):
        b = min(a + L, len(seq))
        first = max(0, b - 1 - L)
        with torch.no_grad():
            logp = model(torch.tensor([seq[first:b - 1]]))[0].log_softmax(-1)
        total += sum(float(logp[p - 1 - first, seq[p]]) for p in range(a, b))
    return total


def test_long_continuations_are_scored_from_their_true_preceding_tokens(trained):
    lm = AblateLM(run=str(trained), max_length=8)
    context, continuation = list(range(10, 13)), list(range(20, 47))  # 27 tokens against a context of 8
    (logprob, _), = lm._loglikelihood_tokens([(None, context, continuation)])
    assert logprob == pytest.approx(_direct_loglikelihood(lm.model, context, continuation, 8), rel=1e-5)
    # the same as scoring the pieces one by one, each after all that precedes it
    pieces = [(None, context + continuation[:i], continuation[i:i + 8]) for i in range(0, 27, 8)]
    assert logprob == pytest.approx(sum(lp for lp, _ in lm._loglikelihood_tokens(pieces)), rel=1e-5)


def test_a_nan_log_likelihood_is_an_error_not_an_answer():
    """lm-eval takes the argmax over a minimal pair's log-likelihoods, and argmax returns the first
    choice on NaN: a broken model would score 100% where the right answer comes first."""
    from ablate.data.tokens import Tokenizer

    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, max_seq_len=16))
    tokenizer = Tokenizer(inner=None, eos_id=0, name="none")
    lm = AblateLM(model=model, tokenizer=tokenizer, max_length=16)
    requests = [(None, [1, 2, 3], [4, 5]), (None, [1, 2, 3], [6])]
    assert all(math.isfinite(lp) for lp, _ in lm._loglikelihood_tokens(requests))
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(RunError, match="NaN for 2 of 2 requests"):
        lm._loglikelihood_tokens(requests)


def test_generation_keeps_the_prompt_and_stays_in_the_context(trained):
    from lm_eval.api.instance import Instance

    lm = AblateLM(run=str(trained), max_length=16)
    seen: list[int] = []
    lm.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    text = "the dogs near the table see themselves . " * 6  # far more than 16 tokens
    for max_gen, prompt in ((16, 8), (64, 8), (4, 12)):  # max_gen_toks >= the context keeps half for the prompt
        seen.clear()
        lm.generate_until([Instance("generate_until", {}, (text, {"until": ["\n\n"], "max_gen_toks": max_gen}), 0)],
                          disable_tqdm=True)
        assert seen[0] == prompt and sum(seen) <= 16, (max_gen, seen)


def test_evaluation_runs_at_the_trained_length(cache_dir, tmp_path):
    """A run trained at 32 tokens with a 64-row learned table: AblateLM's context and extrapolation's
    1x are 32 tokens, and the untrained rows 33-64 are never used (2x is not applicable)."""
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path, "run_name=short", "model/position=learned",
                                                   "train.seq_len=32", "train.tokens=4096"))
    run = tmp_path / "default" / "short"
    assert AblateLM(run=str(run)).max_length == 32
    cli_in_process("ablate.evaluate", f"run={run}", "suite=extrapolation")
    rows = json.loads((run / "eval" / "extrapolation.json").read_text())["results"]
    assert rows["extrapolation_1x"]["seq_len"] == 32 and math.isfinite(rows["extrapolation_1x"]["perplexity,none"])
    assert rows["extrapolation_2x"]["perplexity,none"] is None
    assert rows["extrapolation_2x"]["not_applicable"] == "learned positions were trained on 32 tokens"
