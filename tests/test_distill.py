"""Distillation (ablate.train.distill) through the real entry points: a teacher trained by ablate (and the
same teacher exported to transformers), students distilled from it, the refusals."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ablate.train.distill import distillation_loss, objective

from conftest import cli_in_process, rewound, run_cli, tiny_overrides

TEACHER = ("model.dim=96", "train.tokens=30720", "run_name=teacher")
STUDENT = ("train.tokens=20480", "train.micro_batch=4")  # 20 steps, checkpoints at 10 and 20


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, cache_dir) -> Path:
    results = tmp_path_factory.mktemp("teachers")
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, results, *TEACHER))
    return results / "default" / "teacher"


def student(cache_dir, results: Path, name: str, *extra: str, check: bool = True):
    out = cli_in_process("ablate.train", *tiny_overrides(cache_dir, results, f"run_name={name}", *STUDENT, *extra),
                         check=check)
    return out if not check else results / "default" / name


def test_the_loss_is_the_kl_of_the_teacher_and_the_student_at_the_temperature():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11) * 2
    for temperature in (1.0, 2.5):
        p, q = F.softmax(t / temperature, -1), F.softmax(s / temperature, -1)
        reference = sum(float(p[b, i, v] * math.log(p[b, i, v] / q[b, i, v]))
                        for b in range(2) for i in range(3) for v in range(11)) / 6 * temperature**2
        assert float(distillation_loss(s, t, temperature)) == pytest.approx(reference, rel=1e-5)
    # top-k: both sides on the same k + 1 outcomes, the teacher's k best tokens and one bucket for the rest
    k, temperature = 4, 2.0
    p, q = F.softmax(t / temperature, -1), F.softmax(s / temperature, -1)
    total = 0.0
    for b in range(2):
        for i in range(3):
            best = sorted(range(11), key=lambda v: -float(p[b, i, v]))[:k]
            p_rest = 1 - sum(float(p[b, i, v]) for v in best)
            q_rest = 1 - sum(float(q[b, i, v]) for v in best)
            total += sum(float(p[b, i, v]) * math.log(float(p[b, i, v]) / float(q[b, i, v])) for v in best)
            total += p_rest * math.log(p_rest / q_rest)
    reference = total / 6 * temperature**2
    assert float(distillation_loss(s, t, temperature, top_k=k)) == pytest.approx(reference, rel=1e-4)
    # a student that matches the teacher's top k and its rest mass, however it spreads the rest, loses nothing
    ids = t.topk(k, -1).indices
    shuffled = t.clone()
    rest = torch.ones_like(t, dtype=torch.bool).scatter(-1, ids, False)
    shuffled[rest] = t[rest].reshape(2, 3, 11 - k).flip(-1).reshape(-1)
    assert float(distillation_loss(shuffled, t, 1.0, top_k=k)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(shuffled, t, 1.0)) > 1e-3  # the full KL does see the difference
    assert float(distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher
    ce = torch.tensor(2.0)
    assert objective(ce, None, 0.0) is ce and float(objective(ce, torch.tensor(4.0), 0.25)) == 2.5


def test_gradients_reach_the_student_only():
    from ablate.config import DistillConfig, ModelConfig
    from ablate.model import Transformer
    from ablate.run.teacher import TeacherInfo
    from ablate.train.distill import Teacher

    cfg = ModelConfig(dim=32, n_layers=2, vocab_size=64, max_seq_len=16)
    stu, tea = Transformer(cfg), Transformer(cfg)
    teacher = Teacher(tea, "ablate", {}, TeacherInfo("t", "ablate", "h", 1.0, 1))
    x = torch.randint(0, 64, (2, 16))
    loss = objective(F.cross_entropy(stu(x).reshape(-1, 64), x.reshape(-1)),
                     distillation_loss(stu(x), teacher(x), DistillConfig().temperature), 0.5)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stu.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in tea.parameters()) and not teacher.model.training


def test_distilled_runs(teacher, cache_dir, tmp_path):
    results = tmp_path / "students"
    plain = student(cache_dir, results, "plain")
    # weight 0 is plain training bit for bit, the teacher named or not
    zero = student(cache_dir, results, "zero", f"train.distill.teacher={teacher}", "train.distill.weight=0")
    timing = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in metrics(zero)] == \
           [{k: v for k, v in r.items() if k not in timing} for r in metrics(plain)]
    assert "teacher" not in summary(zero)

    teacher_weights = torch.load(sorted((teacher / "checkpoints").iterdir())[-1], weights_only=False)["model"]
    half = student(cache_dir, results, "half", f"train.distill.teacher={teacher}", "train.distill.weight=0.5",
                   "train.distill.temperature=2")
    rows, s = metrics(half), summary(half)
    assert all("distill_loss" in r and r["distill_loss"] >= 0 for r in rows)
    assert rows[-1]["distill_loss"] < rows[0]["distill_loss"]  # the student moves toward its teacher
    assert [r["loss"] for r in rows] != [r["loss"] for r in metrics(plain)]
    t = s["teacher"]
    assert t["path"] == str(teacher) and t["kind"] == "ablate" and len(t["config_hash"]) == 16
    assert s["teacher_flops_per_token"] == pytest.approx(summary(teacher)["flops_per_token"] / 3)
    after = torch.load(sorted((teacher / "checkpoints").iterdir())[-1], weights_only=False)["model"]
    assert all(torch.equal(teacher_weights[k], after[k]) for k in after)  # the teacher never learns

    # a distilled run resumes as any run does, and on two processes computes what one computes
    again = rewound(half, tmp_path / "again", 10)
    cli_in_process("ablate.train", *tiny_overrides(cache_dir, tmp_path / "again", "run_name=half", *STUDENT,
                                                   f"train.distill.teacher={teacher}", "train.distill.weight=0.5",
                                                   "train.distill.temperature=2"))
    assert summary(again)["attempts"][0]["step"] == 10
    two = tmp_path / "two"
    run_cli("torch.distributed.run", "--nproc_per_node=2", "--master_port=29571", "-m", "ablate.train",
            *tiny_overrides(cache_dir, two, "run_name=half", *STUDENT, f"train.distill.teacher={teacher}",
                            "train.distill.weight=0.5", "train.distill.temperature=2"), env={"OMP_NUM_THREADS": "1"})
    for other in (again, two / "default" / "half"):
        for a, b in zip(metrics(other), rows, strict=True):
            assert a["distill_loss"] == pytest.approx(b["distill_loss"], rel=1e-4)
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)

    # the plan counts the teacher's forward in FLOPs/token and GPU-hours
    plan = cli_in_process("ablate.train", "-m", *tiny_overrides(cache_dir, results, *STUDENT,
                                                          f"train.distill.teacher={teacher}",
                                                          "train.distill.weight=0,0.5"), "--plan").stdout
    flops = [float(row.split()[4]) for row in plan.splitlines() if row.strip()[:1].isdigit() and "M " in row]
    assert len(flops) == 2 and flops[1] == pytest.approx(flops[0] + s["teacher_flops_per_token"], rel=5e-3)  # 3 digits

    # the same teacher exported to transformers: the same distillation
    hf_dir = tmp_path / "hf"
    cli_in_process("ablate.evaluate.export", f"run={teacher}", f"out={hf_dir}")
    via_hf = student(cache_dir, results, "half_hf", f"train.distill.teacher={hf_dir}", "train.distill.weight=0.5",
                     "train.distill.temperature=2")
    assert summary(via_hf)["teacher"]["kind"] == "transformers"
    for a, b in zip(metrics(via_hf), rows):
        assert a["distill_loss"] == pytest.approx(b["distill_loss"], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_a_teacher_is_refused_before_anything_is_written(teacher, cache_dir, tmp_path):
    results = tmp_path / "refused"
    # another tokenizer (another vocabulary size): refused, naming both
    out = student(cache_dir, results, "other_vocab", f"train.distill.teacher={teacher}", "train.distill.weight=1",
                  "data.vocab_size=400", check=False)
    assert out.returncode == 2, out.stderr
    assert "its tokenizer (512 tokens) is not the student's" in out.stderr and "400 tokens" in out.stderr
    run = results / "default" / "other_vocab"
    assert not any((run / name).exists() for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints"))
    # no teacher where named, or weight without a teacher: before any job of a sweep is submitted
    sweep = tmp_path / "sweep"
    out = cli_in_process("ablate.train", "-m", *tiny_overrides(cache_dir, sweep, "train.distill.teacher=/nowhere",
                                                                "train.distill.weight=0.5,1"), check=False)
    assert out.returncode == 2 and "train.distill.teacher" in out.stderr and "neither an ablate run" in out.stderr
    assert not sweep.exists()
    out = student(cache_dir, results, "nobody", "train.distill.weight=0.5", check=False)
    assert out.returncode == 2 and "needs a teacher" in out.stderr
