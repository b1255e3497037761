"""Data: the synthetic language and its probes, sources, tokenizer and token cache, batch order."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ablate.config import DataConfig, RunConfig
from ablate.data.batches import Batches
from ablate.data.synthetic import documents, probe_items, write_probes
from ablate.data.tokens import prepare
from ablate.registry import ConfigError

from conftest import ROOT


# ---- the synthetic language ------------------------------------------------------------------------
def test_corpus_is_a_pure_function_of_its_seed():
    a = list(documents(3, 20_000))
    assert a == list(documents(3, 20_000))
    assert a != list(documents(4, 20_000))
    words = sum(d.count(" ") + 1 for d in a)
    assert 20_000 <= words < 20_000 + 400


def test_no_probe_item_appears_in_training_text():
    text = "\n".join(documents(0, 400_000))
    probes = probe_items(1234, 300)
    for item in probes["agreement"]:
        assert item["sentence_good"] not in text and item["sentence_bad"] not in text
    for item in probes["recall"]:
        assert item["context"] not in text
    for item in probes["copy"]:
        assert item["context"].partition(" |")[0] not in text
    for task in ("length", "nesting"):
        for item in probes[task]:
            assert item["sentence_good"] not in text and item["sentence_bad"] not in text
    # and training does contain the four kinds of structure the probes test
    assert "themselves ." in text and " ask " in text and "copy : " in text and "nest : ( " in text


def test_probes_are_well_formed_minimal_pairs_and_queries():
    probes = probe_items(7, 200)
    for task in ("agreement", "length", "nesting"):  # BLiMP's fields; the good one at `gold`, 0 and 1 in turn
        items = probes[task]
        assert all(i["choices"][i["gold"]] == i["sentence_good"] and i["choices"][1 - i["gold"]] == i["sentence_bad"]
                   for i in items)
        assert sum(i["gold"] for i in items) == len(items) // 2
    for item in probes["agreement"]:
        good, bad = item["sentence_good"].split(), item["sentence_bad"].split()
        assert len(good) == len(bad) and sum(g != b for g, b in zip(good, bad)) == 1
    agreement = probes["agreement"]
    assert {i["distance"] for i in agreement} == {1, 2, 3, 4}  # an adjacent subject is the nearest noun
    for factor in ("plural", "attracted"):  # balanced: neither number nor the nearest noun gives it away
        assert sum(i[factor] for i in agreement) == len(agreement) // 2
    assert sum(i["phenomenon"] == "anaphor" for i in agreement) == 96  # 200 items: the factors cycle over 16
    for item in agreement:
        if item["phenomenon"] == "anaphor":  # the verb before the reflexive does not show number
            verb = item["sentence_good"].split()[-3]
            assert verb.endswith("ed") and {item["sentence_good"].split()[-2], item["sentence_bad"].split()[-2]} \
                & {"themselves"}
    tables: dict[str, list[dict]] = {}
    for item in probes["recall"]:
        key = item["context"].split()[-1]
        table = item["context"].split(" . ask ")[0].removeprefix("table : ").split(" , ")
        value = dict(pair.split() for pair in table)[key]
        assert item["choices"][item["gold"]] == value and len(set(item["choices"])) == item["n_pairs"] == len(table)
        tables.setdefault(item["context"].split(" . ask ")[0], []).append(item)
    for items in tables.values():  # each table asked for each key once: every choice is gold once
        assert sorted(i["gold"] for i in items) == list(range(len(items))) == sorted(i["slot"] for i in items)
        assert len({i["cluster"] for i in items}) == 1  # the queries of a table are one cluster
    assert len({i["cluster"] for i in probes["recall"]}) == len(tables)
    assert {i["n_pairs"] for i in probes["recall"]} == set(range(2, 9))
    spans: dict[int, list[dict]] = {}
    for item in probes["copy"]:
        spans.setdefault(item["item"], []).append(item)
    assert len(spans) == 200 // 5
    for rows in spans.values():  # one row per word, each asking for the next word of the copy
        span, _, copied = rows[-1]["context"].removeprefix("copy : ").partition(" |")
        assert [r["position"] for r in rows] == list(range(len(span.split())))
        assert [r["continuation"].strip() for r in rows] == span.split()
        assert copied.split() == span.split()[:-1]
        assert {r["cluster"] for r in rows} == {rows[0]["item"]}
        assert all(r["source_chance"] == 1 / len(set(span.split())) for r in rows)
    for item in probes["length"]:  # the same source; only where the copy ends differs
        good, bad = item["sentence_good"], item["sentence_bad"]
        source, _, copy = good.removeprefix("copy : ").removesuffix(" .").partition(" | ")
        bad_source, _, bad_copy = bad.removeprefix("copy : ").removesuffix(" .").partition(" | ")
        assert source == copy == bad_source and len(source.split()) == item["length"]
        words = source.split()
        assert bad_copy.split() == ([*words, words[0]] if item["longer"] else words[:-1])
    assert sum(i["longer"] for i in probes["length"]) == 100  # a shorter wrong copy as often as a longer one
    assert {i["length"] for i in probes["length"]} == set(range(6, 17))
    for item in probes["nesting"]:
        good = item["sentence_good"].removeprefix("nest : ").removesuffix(" .").split()
        bad = item["sentence_bad"].removeprefix("nest : ").removesuffix(" .").split()
        assert _balanced(good) and not _balanced(bad)
        a, b = [i for i, (g, w) in enumerate(zip(good, bad)) if g != w]
        assert (bad[a], bad[b]) == (good[b], good[a]) and good[a] != good[b] and b - a == item["gap"]
        assert {good[a - 1], good[b - 1]} <= {")", "]"}  # each follows a closer
        for kind in ("()", "[]"):  # per kind, the counts stay balanced and never go below zero
            depth = list(itertools.accumulate((t == kind[0]) - (t == kind[1]) for t in bad))
            assert min(depth) >= 0 and depth[-1] == 0
        assert good[a - item["distance"]] == {")": "(", "]": "["}[good[a]]  # the opener it closes
        assert len(good) == 2 * item["n_pairs"]
    assert {i["depth"] for i in probes["nesting"]} >= {2, 3}


def test_skill_free_scorers_sit_at_chance_on_every_probe():
    """Each probe's skill-free scorers (without the skill it names, with every other advantage)
    score inside the 95% interval of guessing, on 400 items of each probe, on two seeds."""
    from ablate.data.skillfree import score, skill_free

    scorers = skill_free(training_words=200_000)
    assert set(scorers) == {"agreement", "length", "nesting", "recall", "copy"}
    for seed in (11, 12):
        items = probe_items(seed, 400)
        for probe, pairs in scorers.items():
            assert len(items[probe]) >= 400
            for scorer, chance in pairs:
                got = score(probe, items[probe], scorer, chance)
                assert got.at_chance, f"{probe}: {scorer.name} {got.correct}/{got.n}, outside {got.low}-{got.high}"


def test_the_scorers_find_a_probe_that_does_not_isolate_its_skill():
    """The check can fail: on the former designs (a wrong length copy one word short with a source one
    word longer; a nesting closer of the wrong kind; the good sentence always first) the scorers
    without the skill score far above chance."""
    from ablate.data.skillfree import KindCounters, NoStopCopier, SourceBag, score

    items = probe_items(11, 400)
    vocabulary = {w for i in items["length"] for w in i["sentence_good"].split()} | {"(", ")", "[", "]", "nest"}
    old_length = []
    for i in items["length"]:
        words = i["sentence_good"].removeprefix("copy : ").split(" | ")[0].split()
        extra = "ga" if words[-1] != "ga" else "fa"
        good = i["sentence_good"]
        bad = f"copy : {' '.join([*words, extra])} | {' '.join(words[:-1])} ."
        old_length.append({"choices": [good, bad], "gold": 0})
    for scorer in (SourceBag(vocabulary), NoStopCopier(vocabulary)):
        got = score("length", old_length, scorer)
        assert got.correct > got.high, f"{scorer.name}: {got.correct}/{got.n}"
    old_nesting = []
    for i in items["nesting"]:
        good = i["sentence_good"].split()
        bad = list(good)
        first = next(k for k, (g, w) in enumerate(zip(good, i["sentence_bad"].split())) if g != w)
        bad[first] = {")": "]", "]": ")"}[good[first]]  # one closer changed: the kinds' counts unbalance
        old_nesting.append({"choices": [" ".join(good), " ".join(bad)], "gold": 0})
    got = score("nesting", old_nesting, KindCounters(vocabulary))
    assert got.correct > got.high, f"{got.correct}/{got.n}"


def _balanced(tokens: list[str]) -> bool:
    stack = []
    for t in tokens:
        if t in "([":
            stack.append(t)
        elif not stack or {")": "(", "]": "["}[t] != stack.pop():
            return False
    return not stack


def test_write_probes(tmp_path):
    paths = write_probes(tmp_path, seed=5, n=20)
    assert sorted(paths) == ["agreement", "copy", "length", "nesting", "recall"]
    rows = [json.loads(line) for line in paths["agreement"].read_text().splitlines()]
    assert len(rows) == 20 and "sentence_good" in rows[0]


# ---- sources and errors ----------------------------------------------------------------------------
def test_local_files_of_each_kind(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"document number {i} says hello to the world again and again." for i in range(400)]
    (tmp_path / "a.txt").write_text("\n\n".join(docs[:100]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[100:200]))
    pq.write_table(pa.table({"body": docs[200:]}), tmp_path / "c.parquet")
    cfg = DataConfig(source="files", paths=[str(tmp_path / "a.txt")], vocab_size=300, val_tokens=200,
                     cache_dir=str(tmp_path / "cache"))
    txt = prepare(cfg)
    assert txt.tokenizer.decode(list(txt.train[: txt.train.tolist().index(txt.tokenizer.eos_id)])) == docs[0]
    for name in ("b.jsonl", "c.parquet"):
        data = prepare(DataConfig(**{**cfg.__dict__, "paths": [str(tmp_path / name)], "text_field": "body"}))
        assert len(data.train) + len(data.val) > 1000
    with pytest.raises(ConfigError, match=r"data.text_field='text': not a field .*valid: body"):
        prepare(DataConfig(**{**cfg.__dict__, "paths": [str(tmp_path / "b.jsonl")]}))


@pytest.mark.parametrize("change,message", [
    ({"source": "files", "paths": ["/nonexistent/*.jsonl"]}, "data.paths='/nonexistent/*.jsonl': matches no file"),
    ({"source": "files", "paths": []}, "data=files needs one or more paths"),
    ({"source": "hf", "name": None}, "needs a dataset name"),
    ({"source": "kaggle"}, "valid: synthetic, files, hf"),
])
def test_bad_data_is_named(change, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("*", r"\*")):
        prepare(DataConfig(**{**DataConfig(cache_dir=str(tmp_path)).__dict__, **change}))


def test_empty_corpus_and_tiny_vocab(tmp_path):
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(ConfigError, match="corpus is empty"):
        prepare(DataConfig(source="files", paths=[str(tmp_path / "empty.jsonl")], cache_dir=str(tmp_path / "c")))
    assert not [p for p in (tmp_path / "c").glob("tokens-*") if p.is_dir()], "a failed build leaves no directory"
    with pytest.raises(ConfigError, match="data.vocab_size=100: a byte-level BPE needs at least 257"):
        RunConfig.from_dict({"data": {"vocab_size": 100}})


def test_missing_hf_dataset_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = DataConfig(source="hf", name="nobody/no-such-dataset", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="data.name='nobody/no-such-dataset': could not load the dataset"):
        prepare(cfg)


# ---- the cache under concurrency ----------------------------------------------------------------
def test_processes_started_together_build_the_cache_once(tmp_path):
    script = (
        "import logging, sys, hashlib; logging.basicConfig(level=logging.INFO);"
        "from ablate.config import DataConfig; from ablate.data.tokens import prepare;"
        f"d = prepare(DataConfig(synthetic_words=80000, vocab_size=600, val_tokens=2048, cache_dir={str(tmp_path)!r}));"
        "print(d.key, hashlib.sha256(bytes(d.train)).hexdigest())"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len({o[0] for o in outs}) == 1  # the same tokens everywhere
    logs = "".join(o[1] for o in outs)
    assert logs.count("building") == 2, logs  # one tokenizer and one token file, by one process each
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if p.is_dir()) == ["tokenizer", "tokens"]


# ---- batch order --------------------------------------------------------------------------------
def test_batch_order_depends_on_data_seed_only():
    tokens = np.arange(10_000, dtype=np.uint16)
    a, b = Batches(tokens, 16, seed=0), Batches(tokens, 16, seed=0)
    x, y = a.sequences(0, 8)
    assert torch.equal(x, b.sequences(0, 8)[0]) and torch.equal(y[:, :-1], x[:, 1:])
    assert not torch.equal(x, Batches(tokens, 16, seed=1).sequences(0, 8)[0])
    # a step's global batch is the same split over 1 or 2 processes, in the same order
    one = torch.cat([m[0] for m in a.micro_batches(step=3, batch=8, micro=2)])
    two = torch.cat([m[0] for r in (0, 1) for m in a.micro_batches(step=3, batch=8, micro=2, rank=r, world=2)])
    assert torch.equal(one, two)
    # every chunk once per epoch, then a new order
    n = a.n_chunks
    first = [a.chunk(i) for i in range(n)]
    assert sorted(first) == list(range(n)) and [a.chunk(n + i) for i in range(n)] != first


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_dataset_source_from_a_local_dataset(tmp_path, streaming):
    """The `hf` source calls datasets.load_dataset for real; here on a local dataset directory."""
    root = tmp_path / "my_dataset"
    root.mkdir()
    docs = [f"story {i}: the cat sat on the mat and looked at the dog number {i % 7}." for i in range(600)]
    (root / "train.jsonl").write_text("".join(json.dumps({"story": d}) + "\n" for d in docs))
    cfg = DataConfig(source="hf", name=str(root), split="train", text_field="story", streaming=streaming,
                     max_documents=500, vocab_size=300, val_tokens=500, cache_dir=str(tmp_path / "cache"))
    data = prepare(cfg)
    stream = np.concatenate([data.train, data.val])
    assert int((stream == data.tokenizer.eos_id).sum()) == 500  # max_documents respected
    first = stream[: list(stream).index(data.tokenizer.eos_id)]
    assert data.tokenizer.decode(list(first)) == docs[0]
    with pytest.raises(ConfigError, match=r"data.text_field='text': not a column .*valid: story"):
        prepare(DataConfig(**{**cfg.__dict__, "text_field": "text"}))
