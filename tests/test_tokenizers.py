"""The tokenizer study (ablate-tokenizers) on the built-in multilingual sample and, where present, on
the 15 languages of ../shared/data; a sweep over tokenizers reported in bits per byte."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablate.data.tokens import Tokenizer
from ablate.tokenizer_study import builtin_sample, mix, rule_decision, split

from conftest import ROOT, cli_in_process, tiny_overrides

MANPAGES = ROOT.parent / "shared" / "data" / "text" / "multilingual"
COLUMNS = ["language", "vocab_size", "fertility_multilingual", "fertility_monolingual", "ratio", "breaks_rule"]


def test_the_study_on_the_builtin_sample(tmp_path):
    out = cli_in_process("ablate.tokenizer_study", f"results_dir={tmp_path}", "builtin_scale=0.3",
                         "vocab_sizes=[512,4096]")
    where = tmp_path / "tokenizers" / "builtin"
    table = pd.read_csv(where / "fertility.csv")
    assert set(COLUMNS) <= set(table.columns) and (where / "fertility.png").stat().st_size > 1000
    assert sorted(table.language.unique()) == sorted(["latin", "accented", "cyrillic", "greek", "kana"])
    assert set(table[table.language == "kana"].unit) == {"character"} and set(table[table.language != "kana"].unit) == {
        "word"}
    decided = [rule_decision(lo, hi, 1.10) for lo, hi in zip(table.ratio_low, table.ratio_high)]
    assert list(table.breaks_rule) == decided and set(decided) <= {"yes", "no", "undecided"}
    assert (table.monolingual == "trained").all()
    assert (table.ratio_low <= table.ratio).all() and (table.ratio <= table.ratio_high).all()
    # a larger vocabulary: fewer tokens per word for every language and tokenizer
    small, large = (table[table.vocab_size == v].set_index("language") for v in (512, 4096))
    assert (large.fertility_multilingual < small.fertility_multilingual).all()
    assert (large.fertility_monolingual < small.fertility_monolingual).all()

    # measured again here, from the saved tokenizers and the same held-out documents
    docs = builtin_sample(0.3, 0)["greek"]
    _, heldout = split(docs, 0.1)
    words = sum(len(d.split()) for d in heldout)
    row = small.loc["greek"]
    for kind, column in (("multilingual", "fertility_multilingual"), ("greek", "fertility_monolingual")):
        tok = Tokenizer.load(where / "tokenizers" / f"{kind}-512.json")
        assert sum(len(t) for t in tok.encode_batch(heldout)) / words == pytest.approx(row[column], rel=1e-9)
    assert row.ratio == pytest.approx(row.fertility_multilingual / row.fertility_monolingual, rel=1e-9)

    md = (where / "fertility.md").read_text()
    for size, part in table.groupby("vocab_size"):
        broken = part[part.breaks_rule == "yes"].language.tolist()
        section = md.split(f"## Vocabulary {size:,}")[1].split("## ")[0]
        assert all(f"{lang} (" in section.split("\n\n")[1] for lang in broken)
        assert f"vocabulary {size:,}: breaking the 1.10 rule: {', '.join(broken) or 'none'};" in out.stdout


def test_the_rule_is_decided_on_the_interval_and_a_pretrained_baseline_can_be_given(tmp_path):
    assert rule_decision(1.12, 1.30, 1.10) == "yes" and rule_decision(0.95, 1.10, 1.10) == "no"
    assert rule_decision(1.05, 1.15, 1.10) == "undecided"  # a point estimate of 1.12 would have said yes
    cli_in_process("ablate.tokenizer_study", f"results_dir={tmp_path}", "builtin_scale=0.2", "vocab_sizes=[512]",
                   "name=a")
    baseline = tmp_path / "tokenizers" / "a" / "tokenizers" / "multilingual-512.json"
    cli_in_process("ablate.tokenizer_study", f"results_dir={tmp_path}", "builtin_scale=0.2", "vocab_sizes=[512]",
                   "name=b", f"baselines={{greek: {baseline}}}")
    table = pd.read_csv(tmp_path / "tokenizers" / "b" / "fertility.csv").set_index("language")
    # greek measured with the given tokenizer (here the multilingual one itself: a ratio of exactly 1)
    assert table.loc["greek", "monolingual"] == str(baseline) and table.loc["greek", "ratio"] == 1.0
    assert table.loc["greek", "breaks_rule"] == "no" and table.loc["latin", "monolingual"] == "trained"
    assert not (tmp_path / "tokenizers" / "b" / "tokenizers" / "greek-512.json").exists()
    assert "Pretrained monolingual baselines: greek" in (tmp_path / "tokenizers" / "b" / "fertility.md").read_text()


def test_the_mix_follows_the_exponent():
    train = {"big": ["x" * 100] * 90, "small": ["y" * 100] * 10}
    for alpha, expected in ((1.0, 0.9), (0.0, 0.5), (0.5, 3 / 4)):
        docs, shares = mix(train, alpha)
        big = sum(len(d) for d in docs if d[0] == "x") / sum(len(d) for d in docs)
        assert shares["big"] == pytest.approx(expected) and big == pytest.approx(expected, abs=0.01)


def test_a_missing_corpus_is_one_line_and_writes_nothing(tmp_path):
    out = cli_in_process("ablate.tokenizer_study", f"results_dir={tmp_path}", "name=bad",
                         "corpora={en: {paths: [/nowhere/en.txt]}}", check=False)
    assert out.returncode == 2 and "corpora.en.paths" in out.stderr and "matches no file" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tokenizers" / "bad" / "fertility.csv").exists()
    out = cli_in_process("ablate.tokenizer_study", f"results_dir={tmp_path}", "vocab_sizes=[100]", check=False)
    assert out.returncode == 2 and "vocab_sizes" in out.stderr


@pytest.mark.skipif(not MANPAGES.is_dir(), reason="../shared/data/text/multilingual is not here")
def test_the_study_on_fifteen_languages(tmp_path):
    cli_in_process("ablate.tokenizer_study", "+study=manpages", f"data_dir={MANPAGES}", f"results_dir={tmp_path}",
                   "vocab_sizes=[4096]", "max_bytes=200000")
    table = pd.read_csv(tmp_path / "tokenizers" / "manpages" / "fertility.csv")
    assert len(table) == 15 and set(table[table.language == "ja"].unit) == {"character"}
    assert (table.fertility_monolingual > 1).sum() == 14  # whitespace words take more than one token
    # 15 languages sharing 4,096 tokens: each is worse off than with its own
    assert (table.ratio > 1).all() and table.vocab_share.between(0.05, 0.6).all()


def test_a_tokenizer_sweep_is_reported_in_bits_per_byte(cache_dir, tmp_path):
    sweep = tiny_overrides(cache_dir, tmp_path, "train.tokens=20480", "train.log_every=10")
    plan = cli_in_process("ablate.train", "-m", *sweep, "data.vocab_size=384,1024", "seed=0,1", "--plan").stdout
    assert "differs by design: the tokenizer (data.vocab_size)" in plan and "bits per byte" in plan
    flops = {float(row.split()[4]) for row in plan.splitlines() if row.strip()[:1].isdigit() and "M " in row}
    assert len(flops) == 2  # the planned heads follow each arm's vocabulary, not model.vocab_size
    cli_in_process("ablate.train", "-m", *sweep, "data.vocab_size=384,1024", "seed=0,1")
    experiment = tmp_path / "default"
    runs = sorted(p for p in experiment.iterdir() if (p / "summary.json").exists())
    assert len(runs) == 4
    # bits per byte, recomputed from the token cache: nats per token / ln 2 / bytes per scored token
    run = runs[0]
    s = json.loads((run / "summary.json").read_text())
    vocab = Tokenizer.load(run / "tokenizer.json").vocab_size
    meta_dir = next(p for p in Path(cache_dir).glob("tokens-*")  # a cache directory, not its lock file
                    if p.is_dir() and json.loads((p / "meta.json").read_text())["vocab_size"] == vocab)
    meta = json.loads((meta_dir / "meta.json").read_text())
    tokens = np.memmap(meta_dir / "tokens.bin", dtype=meta["dtype"], mode="r")
    val = tokens[len(tokens) - 2048:]
    n = (len(val) - 1) // 64 * 64
    text = Tokenizer.load(run / "tokenizer.json").decode(np.asarray(val[1:n + 1]).tolist())
    assert s["val_bpb"] == pytest.approx(s["val_loss"] / math.log(2) * n / len(text.encode()), rel=1e-9)

    cli_in_process("ablate.report", f"path={experiment}")
    md = (experiment / "report" / "table.md").read_text()
    assert "the arms use different tokenizers (`data.vocab_size`): losses are compared in bits per byte" in md
    verdict = md.split("## Verdict")[1].split("##")[0]
    assert "**val bits/byte**" in verdict and "val_loss" not in verdict
    assert "val_loss per token (tokenizers differ: not compared)" in md
    comps = pd.read_csv(experiment / "report" / "comparisons.csv")
    assert "train|val_bpb" in set(comps.metric) and "train|val_loss" not in set(comps.metric)
