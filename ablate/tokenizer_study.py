"""`ablate-tokenizers`: the tokenizer study of BLOOM's design. Given text by language, train byte-level
BPE tokenizers (the `tokenizers` library, as ablate's runs use): one multilingual on a mix of all
languages and one monolingual per language, at each vocabulary size; then measure each language's
held-out text with both.

    ablate-tokenizers                                     the built-in multilingual sample (5 scripts)
    ablate-tokenizers +study=manpages                     manual pages in 15 languages (../shared/data)
    ablate-tokenizers 'vocab_sizes=[8192,32768]' alpha=0.5 name=mine 'corpora={en: {paths: [en.txt]}, ...}'

Per language and vocabulary size (fertility.csv, fertility.md, fertility.png in
results/tokenizers/<name>/, and every tokenizer as tokenizers/<language>-<size>.json):
- fertility: tokens per whitespace-separated word; for languages written without spaces between
  words (`per_character`), tokens per non-space character (the `unit` column says which);
- bytes per token (UTF-8) of each tokenizer;
- ratio = multilingual / monolingual fertility, with a 95% interval from 1,000 resamples of the
  held-out documents, and `breaks_rule` decided on that interval against `threshold` (BLOOM's
  1.10): `yes` when the whole interval is above it, `no` when the whole interval is at or below,
  `undecided` when it straddles;
- vocab_share: the share of the multilingual vocabulary the language's held-out text uses;
- vocab_multilingual, vocab_monolingual: the sizes reached. BPE stops merging when its text has no
  pair left to merge, so a small language's monolingual tokenizer can fall short of the size asked
  for; the ratio then compares unequal vocabularies, and the report says so.

The mix: language l enters the multilingual tokenizer's training text with probability proportional
to n_l^alpha (n_l its training bytes; alpha 1 = as found, 0 = uniform, 0.3 as XLM-R and BLOOM's
smoothing), as a share of the total bytes: a small language's text is repeated, a large one's cut.
The held-out text, the last `heldout_fraction` of each language's documents, is never trained on.

What the rule compares here: by default the monolingual tokenizer of a language is trained at the
same size as the multilingual one, on that language alone. Sharing one vocabulary among L
languages then always costs some fertility, more the more scripts and words the languages do not
share, so at equal sizes every language tends to break the rule: the study measures the price of
sharing a vocabulary. BLOOM compared its 250k-token multilingual tokenizer with existing,
smaller monolingual ones; to ask that question, give a pretrained monolingual tokenizer per
language as its baseline (`baselines: {fr: path/to/tokenizer.json}`), which is then measured
instead of a trained one (the `monolingual` column names it).
The library trains with every core (its own threads) and encodes in parallel batches.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablate.cli import CONF_DIR, user_errors
from ablate.config import DataConfig, from_dict
from ablate.data.sources import build_source
from ablate.data.tokens import Tokenizer, train_bpe
from ablate.registry import ConfigError

log = logging.getLogger("ablate.tokenizers")
RESAMPLES = 1000


@dataclass
class StudyConfig:
    """What ablate-tokenizers studies (conf/tokenizers.yaml)."""

    # language -> its text, as data.* fields (paths: [...] for files; source: hf, name, ... for a dataset);
    # null: the built-in multilingual sample
    corpora: dict[str, dict[str, Any]] | None = None
    vocab_sizes: list[int] = field(default_factory=lambda: [2048, 16384])
    alpha: float = 0.3  # the multilingual mix: language l drawn with probability proportional to n_l^alpha
    heldout_fraction: float = 0.1  # the end of each language's documents, measured and never trained on
    threshold: float = 1.10  # multilingual / monolingual fertility above this breaks the rule (BLOOM)
    # language -> a pretrained monolingual tokenizer (a tokenizer.json) to compare with, instead of
    # one trained here at the same size
    baselines: dict[str, str] | None = None
    per_character: list[str] = field(default_factory=lambda: ["ja", "zh", "th", "kana"])  # no spaces between words
    max_bytes: int | None = None  # per language, at most this many bytes of text (null: all)
    builtin_scale: float = 1.0  # the built-in sample's size (1: about 750 KB over 5 languages)
    seed: int = 0
    name: str = "builtin"
    results_dir: str = "results"
    data_dir: str | None = None  # where a study's files are (conf/study/*.yaml name their paths under it)

    def validate(self) -> StudyConfig:
        if not self.vocab_sizes or any(v < 257 for v in self.vocab_sizes):
            raise ConfigError("vocab_sizes", self.vocab_sizes, "byte-level BPE sizes of at least 257")
        if not 0 <= self.alpha <= 1:
            raise ConfigError("alpha", self.alpha, "must be in [0, 1]")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError("heldout_fraction", self.heldout_fraction, "must be in (0, 1)")
        if self.threshold <= 0:
            raise ConfigError("threshold", self.threshold, "must be positive")
        if self.builtin_scale <= 0:
            raise ConfigError("builtin_scale", self.builtin_scale, "must be positive")
        for language, path in (self.baselines or {}).items():
            if not Path(str(path)).is_file():
                raise ConfigError(f"baselines.{language}", path, "is not a tokenizer.json file")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.results_dir) / "tokenizers" / self.name


# ---- the built-in sample --------------------------------------------------------------------------
BUILTIN = {  # language: (letters of its syllables, thousands of characters, words separated by spaces)
    "latin": ("ptkbdgmnlrs", "aeiou", 300, True),
    "accented": ("ptkbdgmnlrsßvz", "aeiouäöüéè", 150, True),
    "cyrillic": ("пткбдгмнлрсвзжш", "аеиоуыяю", 150, True),
    "greek": ("πτκβδγμνλρσφχ", "αεηιουω", 80, True),
    "kana": ("", "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほ"
                 "まみむめもやゆよらりるれろわん", 70, False),
}


def builtin_sample(scale: float = 1.0, seed: int = 0) -> dict[str, list[str]]:
    """Documents in five generated languages of different scripts and sizes: each a Zipfian
    lexicon of 1-4 syllable words in sentences, one with no spaces between words."""
    rng = random.Random(seed)
    out = {}
    for language, (consonants, vowels, kchars, spaced) in BUILTIN.items():
        syllables = ([c + v for c in consonants for v in vowels] + list(vowels)) if consonants else list(vowels)
        lexicon = sorted({"".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
                          for _ in range(3000)})
        rng.shuffle(lexicon)
        weights = [1 / (rank + 2) for rank in range(len(lexicon))]
        docs, size, budget = [], 0, int(kchars * 1000 * scale)
        while size < budget:
            sentences = []
            for _ in range(rng.randint(3, 8)):
                words = rng.choices(lexicon, weights, k=rng.randint(4, 14))
                sentence = (" " if spaced else "").join(words)
                sentences.append((sentence[:1].upper() + sentence[1:] + ".") if spaced else sentence + "。")
            doc = (" " if spaced else "").join(sentences)
            docs.append(doc)
            size += len(doc)
        out[language] = docs
    return out


# ---- reading corpora ------------------------------------------------------------------------------
def read_corpora(cfg: StudyConfig) -> dict[str, list[str]]:
    """Each language's documents (the built-in sample when no corpus is named); ConfigError naming
    the language and the problem for a corpus that cannot be read."""
    if not cfg.corpora:
        return builtin_sample(cfg.builtin_scale, cfg.seed)
    corpora = {}
    for language, spec in cfg.corpora.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"corpora.{language}", spec, "expected data fields, e.g. {paths: [file.txt]} or "
                              "{source: hf, name: DATASET, ...}")
        spec = {"source": "hf" if "name" in spec else "files", **spec}
        data = from_dict(DataConfig, spec, f"corpora.{language}")
        try:
            docs, size = [], 0
            for doc in build_source(data).documents():
                docs.append(doc)
                size += len(doc.encode())
                if cfg.max_bytes and size >= cfg.max_bytes:
                    break
        except ConfigError as err:
            raise ConfigError(f"corpora.{language}.{err.field.split('.')[-1]}", err.value, err.problem,
                              valid=err.valid) from None
        if len(docs) < 2:
            raise ConfigError(f"corpora.{language}", spec, "needs at least 2 documents (one to hold out)")
        corpora[language] = docs
    return corpora


def split(docs: list[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """The training documents and the held-out ones (the last heldout_fraction of the bytes)."""
    sizes = np.cumsum([len(d.encode()) for d in docs])
    cut = int(np.searchsorted(sizes, sizes[-1] * (1 - heldout_fraction)))
    cut = min(max(cut, 1), len(docs) - 1)
    return docs[:cut], docs[cut:]


def mix(train: dict[str, list[str]], alpha: float, seed: int = 0) -> tuple[list[str], dict[str, float]]:
    """The multilingual training documents: language l's share of the total bytes is
    n_l^alpha / sum(n^alpha); its documents repeated (in shuffled passes) or cut to reach it."""
    sizes = {lang: sum(len(d.encode()) for d in docs) for lang, docs in train.items()}
    weights = {lang: n**alpha for lang, n in sizes.items()}
    total, norm = sum(sizes.values()), sum(weights.values())
    shares = {lang: w / norm for lang, w in weights.items()}
    rng = random.Random(seed)
    out = []
    for lang, docs in train.items():
        want, got = shares[lang] * total, 0
        while got < want:
            order = list(docs)
            rng.shuffle(order)
            for doc in order:
                if got >= want:
                    break
                out.append(doc)
                got += len(doc.encode())
    rng.shuffle(out)
    return out, shares


# ---- measuring ------------------------------------------------------------------------------------
@dataclass
class Counts:
    """Per held-out document: tokens, units (words or characters) and bytes."""

    tokens: np.ndarray
    units: np.ndarray
    bytes: np.ndarray
    ids: set[int]


def count(tokenizer: Tokenizer, docs: list[str], per_character: bool) -> Counts:
    encoded = tokenizer.encode_batch(docs)
    units = [sum(not c.isspace() for c in d) if per_character else len(d.split()) for d in docs]
    return Counts(np.array([len(e) for e in encoded]), np.array(units), np.array([len(d.encode()) for d in docs]),
                  {i for e in encoded for i in e})


def ratio_interval(multi: Counts, mono: Counts, seed: int = 0) -> tuple[float, float]:
    """95% interval of sum(multi tokens) / sum(mono tokens) over resamples of the documents."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(multi.tokens), size=(RESAMPLES, len(multi.tokens)))
    ratios = multi.tokens[picks].sum(1) / np.maximum(mono.tokens[picks].sum(1), 1)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def study(cfg: StudyConfig) -> pd.DataFrame:
    """Train the tokenizers and measure every language (see the module doc); writes the outputs."""
    cfg.validate()
    corpora = read_corpora(cfg)
    parts = {lang: split(docs, cfg.heldout_fraction) for lang, docs in corpora.items()}
    train = {lang: p[0] for lang, p in parts.items()}
    mixed, shares = mix(train, cfg.alpha, cfg.seed)
    out = cfg.out_dir
    (out / "tokenizers").mkdir(parents=True, exist_ok=True)
    rows = []
    for size in cfg.vocab_sizes:
        multi = _trained(mixed, size, out / "tokenizers" / f"multilingual-{size}.json")
        for lang, (train_docs, heldout) in parts.items():
            baseline = (cfg.baselines or {}).get(lang)
            mono = (Tokenizer.load(baseline) if baseline else
                    _trained(train_docs, size, out / "tokenizers" / f"{lang}-{size}.json"))
            per_char = lang in cfg.per_character
            a, b = count(multi, heldout, per_char), count(mono, heldout, per_char)
            units = int(a.units.sum())
            ratio = a.tokens.sum() / b.tokens.sum()
            low, high = ratio_interval(a, b, cfg.seed)
            rows.append({
                "language": lang, "vocab_size": size, "unit": "character" if per_char else "word",
                "monolingual": baseline or "trained",
                "fertility_multilingual": a.tokens.sum() / units, "fertility_monolingual": b.tokens.sum() / units,
                "ratio": ratio, "ratio_low": low, "ratio_high": high,
                "breaks_rule": rule_decision(low, high, cfg.threshold),
                "bytes_per_token_multilingual": a.bytes.sum() / a.tokens.sum(),
                "bytes_per_token_monolingual": b.bytes.sum() / b.tokens.sum(),
                "vocab_share": len(a.ids) / multi.vocab_size, "mix_share": shares[lang],
                "vocab_multilingual": multi.vocab_size, "vocab_monolingual": mono.vocab_size,
                "train_bytes": sum(len(d.encode()) for d in train_docs), "heldout_bytes": int(a.bytes.sum()),
            })
    table = pd.DataFrame(rows)
    write_outputs(table, cfg)
    return table


def rule_decision(low: float, high: float, threshold: float) -> str:
    """`yes` when the ratio's whole interval is above the threshold, `no` when all of it is at or
    below, `undecided` when the interval straddles it (the held-out text cannot tell)."""
    return "yes" if low > threshold else ("no" if high <= threshold else "undecided")


def _trained(docs: list[str], size: int, path: Path) -> Tokenizer:
    train_bpe(iter(docs), size, path)
    return Tokenizer.load(path)


# ---- outputs --------------------------------------------------------------------------------------
def write_outputs(table: pd.DataFrame, cfg: StudyConfig) -> None:
    """fertility.md, fertility.csv, fertility.png and index.html, through the report's writers
    (atomically: a reader never sees half a file)."""
    from ablate.report.parts import Part, Table
    from ablate.report.writers import write_report

    figure = plot(table, cfg.threshold, cfg.out_dir / "fertility.png")
    write_report(cfg.out_dir, f"Tokenizer study: {cfg.name}", [Part(blocks(table, cfg), [Table("fertility", table)],
                                                                   [figure])], markdown_name="fertility.md")


def blocks(table: pd.DataFrame, cfg: StudyConfig) -> list:
    """The study as the report's blocks: what was measured, then per vocabulary size the languages
    that break the rule and the table."""
    from ablate.report.parts import Frame, Heading, Text

    languages = table.language.unique()
    out = [Text([f"{len(languages)} languages; byte-level BPE at vocabulary sizes "
                 f"{', '.join(f'{v:,}' for v in cfg.vocab_sizes)}; the multilingual tokenizer trained on a mix "
                 f"with alpha = {cfg.alpha:g}; fertility measured on the last {cfg.heldout_fraction:.0%} of each "
                 "language's documents, never trained on. Fertility is tokens per whitespace word, or per "
                 "non-space character where the unit says so. The ratio's interval: 95%, from resampling the "
                 "held-out documents."])]
    if cfg.baselines:
        named = ", ".join(f"{k}: `{v}`" for k, v in cfg.baselines.items())
        out.append(Text([f"Pretrained monolingual baselines: {named}; the other languages are compared with a "
                         "monolingual tokenizer trained here at the same size."]))
    else:
        out.append(Text(["Every monolingual tokenizer is trained here at the multilingual one's size, so the ratio "
                         "is the price of sharing one vocabulary among the languages (see the README)."]))
    for size, part in table.groupby("vocab_size", sort=True):
        out += [Heading(f"Vocabulary {size:,}"), Text([f"Languages that {_verdict(part, cfg.threshold)}."])]
        short = part[part.vocab_monolingual < size]
        if len(short):
            out.append(Text([f"Monolingual tokenizers short of {size:,} (their text has no more pairs to merge), so "
                             "their ratio compares unequal vocabularies: " + ", ".join(
                                 f"{r.language} ({r.vocab_monolingual:,})" for r in short.itertuples()) + "."]))
        out.append(Frame(pd.DataFrame([{
            "language": r.language, "unit": r.unit, "fertility multilingual": f"{r.fertility_multilingual:.3f}",
            "fertility monolingual": f"{r.fertility_monolingual:.3f}",
            "ratio [95%]": f"{r.ratio:.3f} [{r.ratio_low:.3f}, {r.ratio_high:.3f}]"
                           + {"yes": " breaks", "undecided": " undecided"}.get(r.breaks_rule, ""),
            "bytes/token multi / mono": f"{r.bytes_per_token_multilingual:.2f} / {r.bytes_per_token_monolingual:.2f}",
            "vocabulary used": f"{r.vocab_share:.1%}", "mix share": f"{r.mix_share:.1%}"}
            for r in part.itertuples()]).set_index("language"), numbers_as_text=True))
    return out


def _verdict(part: pd.DataFrame, threshold: float) -> str:
    broken, unsure = part[part.breaks_rule == "yes"], part[part.breaks_rule == "undecided"]
    verdict = (f"break the {threshold:.2f} rule (the whole interval above it): " + ", ".join(
        f"{r.language} ({r.ratio:.3f})" for r in broken.itertuples())) if len(broken) else (
        f"no language breaks the {threshold:.2f} rule")
    if len(unsure):
        verdict += "; undecided (the interval straddles it): " + ", ".join(
            f"{r.language} ({r.ratio:.3f})" for r in unsure.itertuples())
    return verdict


def plot(table: pd.DataFrame, threshold: float, path: Path) -> Path:
    from ablate.report.plots import pyplot, save

    plt = pyplot()
    languages = list(table.language.unique())
    sizes = sorted(table.vocab_size.unique())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(languages) * len(sizes) / 1.5), 4))
    width = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        part = table[table.vocab_size == size].set_index("language").reindex(languages)
        x = np.arange(len(languages)) + (i - (len(sizes) - 1) / 2) * width
        ax.bar(x, part.ratio, width, label=f"vocabulary {size:,}",
               yerr=[part.ratio - part.ratio_low, part.ratio_high - part.ratio], capsize=2)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"rule: {threshold:g}")
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_xticks(np.arange(len(languages)), languages, rotation=45 if len(languages) > 6 else 0)
    ax.set_ylabel("fertility multilingual / monolingual")
    low = min(0.95, float(table.ratio_low.min()) - 0.02)
    ax.set_ylim(low, max(threshold + 0.05, float(table.ratio_high.max()) + 0.02))
    ax.legend(fontsize=8)
    return save(fig, path)


# ---- the command ----------------------------------------------------------------------------------
def run(node: Any) -> pd.DataFrame:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(node, resolve=True)
    data.pop("hydra", None)
    cfg = from_dict(StudyConfig, data, "").validate()
    table = study(cfg)
    size = max(cfg.vocab_sizes)
    print(table[table.vocab_size == size][["language", "unit", "fertility_multilingual", "fertility_monolingual",
                                          "ratio", "breaks_rule"]].to_string(index=False, float_format="%.3f"))
    for v, part in table.groupby("vocab_size"):
        broken = ", ".join(part[part.breaks_rule == "yes"].language) or "none"
        unsure = ", ".join(part[part.breaks_rule == "undecided"].language) or "none"
        print(f"vocabulary {v:,}: breaking the {cfg.threshold:.2f} rule: {broken}; undecided: {unsure}")
    print(f"wrote {cfg.out_dir}/fertility.csv, fertility.md, fertility.png, index.html and tokenizers/")
    return table


def main() -> None:
    import hydra

    from ablate.cli import check_command_line

    check_command_line()

    @hydra.main(config_path=str(CONF_DIR), config_name="tokenizers", version_base=None)
    def app(node: Any) -> Any:
        logging.getLogger("ablate").setLevel(logging.INFO)
        with user_errors():
            return run(node)

    app()


if __name__ == "__main__":
    main()
