"""Skill-free scorers: what a probe scores when the skill it names is missing.

A probe measures a skill only if a model without that skill, however good at everything else,
scores chance on it. Each scorer here is a word-level language model that lacks one skill and has
every other advantage it can be given: the statistics of the training text, the source words of a
copy, per-kind bracket counts. `SKILL_FREE` lists, per probe, the scorers that must sit at chance;
the tests score them on generated items (`python -m ablate.data.skillfree` prints the table).

Scoring follows lm-eval: a multiple-choice item is answered by the choice of highest total log
likelihood (the first one on a tie, which is why the gold position alternates), the copy probe by
the word the scorer would write next (ties broken at random, seeded).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats

from ablate.data.synthetic import (
    CLOSERS,
    COPY_WORDS,
    MAX_DEPTH,
    NOUNS,
    OPENERS,
    REFLEXIVE,
    REFLEXIVE_VERBS,
    VERBS_I,
    VERBS_T,
    documents,
    probe_items,
)

UNLIKELY = math.log(1e-4)


class Scorer:
    """A word-level language model: log p(word | the words before it)."""

    name = "scorer"

    def __init__(self, vocabulary: Iterable[str]) -> None:
        self.vocabulary = sorted(set(vocabulary) | {"."})

    def logp(self, prefix: list[str], word: str) -> float:
        raise NotImplementedError

    def candidates(self, prefix: list[str]) -> list[str]:
        """The words it would consider writing next."""
        return self.vocabulary

    def score(self, context: str, continuation: str) -> float:
        words, new = context.split(), continuation.split()
        # fsum: exactly rounded, so two sentences of the same words in another order tie exactly
        return math.fsum(self.logp(words + new[:i], w) for i, w in enumerate(new))

    def greedy(self, context: str, rng: random.Random) -> str:
        prefix = context.split()
        scored = [(self.logp(prefix, w), w) for w in self.candidates(prefix)]
        best = max(s for s, _ in scored)
        return rng.choice([w for s, w in scored if s == best])


class Constant(Scorer):
    """Every word equally likely: it knows nothing (it prefers shorter sentences, and ties on equal ones)."""

    name = "constant"

    def logp(self, prefix: list[str], word: str) -> float:
        return -math.log(len(self.vocabulary))


class Unigram(Scorer):
    """Word frequencies of the training text (add-one)."""

    name = "unigram"

    def __init__(self, text: list[str]) -> None:
        super().__init__(text)
        self.counts, self.total = Counter(text), len(text)

    def logp(self, prefix: list[str], word: str) -> float:
        return math.log((self.counts[word] + 1) / (self.total + len(self.vocabulary)))


class Bigram(Unigram):
    """Word pairs of the training text (add-one on the pair, over the unigram)."""

    name = "bigram"

    def __init__(self, text: list[str]) -> None:
        super().__init__(text)
        self.pairs: dict[str, Counter] = defaultdict(Counter)
        for a, b in itertools.pairwise(text):
            self.pairs[a][b] += 1

    def logp(self, prefix: list[str], word: str) -> float:
        after = self.pairs.get(prefix[-1] if prefix else ".", Counter())
        prior = math.exp(super().logp(prefix, word))
        return math.log((after[word] + prior * len(self.vocabulary)) / (sum(after.values()) + len(self.vocabulary)))


# ---- agreement ----------------------------------------------------------------------------------
NUMBER = {**{sg: False for sg, *_ in NOUNS}, **{pl: True for _, pl, _ in NOUNS},
          **{sg: False for sg, *_ in VERBS_T + VERBS_I + REFLEXIVE_VERBS},
          **{pl: True for _, pl, *_ in VERBS_T + VERBS_I + REFLEXIVE_VERBS},
          **{r: False for r in REFLEXIVE.values()}, "themselves": True}
AGREEING = {w for w in NUMBER if w not in {n for noun in NOUNS for n in noun[:2]}}  # verbs and reflexives


class NearestNumber(Scorer):
    """Agrees with the nearest number-marked word (an attractor noun, a relative clause's verb), not
    with the subject: linear order without structure."""

    name = "nearest number"

    def logp(self, prefix: list[str], word: str) -> float:
        if word not in AGREEING:
            return 0.0
        last = next((NUMBER[w] for w in reversed(prefix) if w in NUMBER), None)
        return 0.0 if last is None or NUMBER[word] == last else math.log(0.1)


# ---- copy and length ----------------------------------------------------------------------------
def _copy_parts(prefix: list[str]) -> tuple[list[str], list[str]] | None:
    """(source, copied so far) where `prefix` is inside "copy : SOURCE | COPY"; else None."""
    if "copy" not in prefix or "|" not in prefix:
        return None
    start = len(prefix) - 1 - prefix[::-1].index("copy")
    bar = len(prefix) - 1 - prefix[::-1].index("|")
    return (prefix[start + 2:bar], prefix[bar + 1:]) if bar > start else None


class SourceBag(Scorer):
    """Copies a word of the source, any of them alike (it knows which words, not their order or how
    often each occurs), and ends the copy with a fixed probability at every word."""

    name = "bag of source words"
    STOP = 0.1

    def logp(self, prefix: list[str], word: str) -> float:
        parts = _copy_parts(prefix)
        if parts is None:
            return -math.log(len(self.vocabulary))
        source, _ = parts
        if word == ".":
            return math.log(self.STOP)
        distinct = set(source)
        return math.log((1 - self.STOP) / len(distinct)) if word in distinct else UNLIKELY

    def candidates(self, prefix: list[str]) -> list[str]:
        parts = _copy_parts(prefix)
        return sorted(set(parts[0])) if parts else self.vocabulary


class NoStopCopier(SourceBag):
    """Copies the source word by word, position by position (and on from its start when the source
    runs out), ending with a fixed probability at every word: a perfect copier that does not know
    where a copy ends."""

    name = "copier that does not stop"

    def logp(self, prefix: list[str], word: str) -> float:
        parts = _copy_parts(prefix)
        if parts is None or word == ".":
            return super().logp(prefix, word)
        source, copied = parts
        return math.log(1 - self.STOP) if word == source[len(copied) % len(source)] else UNLIKELY


class CopyLexicon(Scorer):
    """Writes a word of the copy lexicon, the most frequent in the training text's copies, without
    looking at the source."""

    name = "unigram of the copy lexicon"

    def __init__(self, text: list[str]) -> None:
        super().__init__(COPY_WORDS)
        counts = Counter(text)
        self.counts = {w: counts[w] for w in COPY_WORDS}

    def logp(self, prefix: list[str], word: str) -> float:
        return math.log(self.counts.get(word, 0) + 1)

    def candidates(self, prefix: list[str]) -> list[str]:
        return list(COPY_WORDS)


class AnyLexiconWord(CopyLexicon):
    """Any word of the copy lexicon, at random."""

    name = "any lexicon word"

    def logp(self, prefix: list[str], word: str) -> float:
        return 0.0


# ---- nesting ------------------------------------------------------------------------------------
class KindCounters(Scorer):
    """A counter per bracket kind, no stack: a closer of a kind is allowed while that kind has an
    open bracket, whichever is innermost."""

    name = "counter per kind"
    per_kind = True

    def logp(self, prefix: list[str], word: str) -> float:
        allowed = self.allowed(prefix)
        if allowed is None:
            return -math.log(len(self.vocabulary))
        return -math.log(len(allowed)) if word in allowed else UNLIKELY

    def allowed(self, prefix: list[str]) -> set[str] | None:
        if "nest" not in prefix:
            return None
        tokens = prefix[len(prefix) - prefix[::-1].index("nest") + 1:]
        open_ = Counter()
        for t in tokens:
            if t in OPENERS:
                open_[OPENERS.index(t)] += 1
            elif t in CLOSERS:
                open_[CLOSERS.index(t) if self.per_kind else 0] -= 1
        depth = sum(open_.values())
        allowed = set(OPENERS) if depth < MAX_DEPTH else set()
        if self.per_kind:
            allowed |= {CLOSERS[k] for k in (0, 1) if open_[k] > 0}
        elif depth > 0:
            allowed |= set(CLOSERS)
        return allowed | ({"."} if depth == 0 else set())


class DepthCounter(KindCounters):
    """One counter for the depth, blind to kind."""

    name = "depth counter"
    per_kind = False


# ---- recall -------------------------------------------------------------------------------------
class TablePosition(Scorer):
    """Answers with the value at one place in the table (first or last), whatever the key."""

    def __init__(self, vocabulary: Iterable[str], last: bool) -> None:
        super().__init__(vocabulary)
        self.last = last
        self.name = "last value of the table" if last else "first value of the table"

    def logp(self, prefix: list[str], word: str) -> float:
        if "table" not in prefix or "ask" not in prefix:
            return 0.0
        table = prefix[prefix.index("table") + 2:prefix.index("ask")]
        values = [table[i + 1] for i in range(0, len(table) - 1, 3) if i + 1 < len(table) and table[i + 1] != "."]
        pick = values[-1] if self.last else values[0]
        return 0.0 if word == pick else UNLIKELY


# ---- scoring ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    probe: str
    scorer: str
    correct: int
    n: int
    chance: float  # the expected accuracy of guessing
    low: int  # the 95% interval of `correct` under chance
    high: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def at_chance(self) -> bool:
        return self.low <= self.correct <= self.high


def score(probe: str, items: list[dict], scorer: Scorer, chance: str = "items", seed: int = 0) -> Score:
    """`scorer`'s accuracy on `items` of `probe`, with the 95% interval of a guesser's count.

    chance: "items" (one over the number of choices, per item; the copy probe: `source_chance` per
    row) or "lexicon" (the copy probe: one word of the copy lexicon)."""
    rng = random.Random(seed)
    correct, p = 0, []
    for item in items:
        if probe == "copy":
            hit = scorer.greedy(item["context"], rng) == item["continuation"].strip()
            p.append(item["source_chance"] if chance == "items" else 1 / len(COPY_WORDS))
        else:
            context = item.get("context", "")
            lls = [scorer.score(context, choice) for choice in item["choices"]]
            if any(math.isnan(x) for x in lls):
                raise ValueError(f"{scorer.name}: a NaN log likelihood on {item}")
            hit = lls.index(max(lls)) == item["gold"]
            p.append(1 / len(item["choices"]))
        correct += hit
    n, mean = len(items), sum(p) / len(p)
    if len(set(p)) == 1:
        low, high = stats.binom.interval(0.95, n, mean)
    else:  # a sum of Bernoullis of different means: the normal approximation
        sd = math.sqrt(sum(q * (1 - q) for q in p))
        low, high = n * mean - 1.96 * sd, n * mean + 1.96 * sd
    return Score(probe, scorer.name, correct, n, mean, math.floor(low), math.ceil(high))


def skill_free(training_words: int = 300_000, seed: int = 0) -> dict[str, list[tuple[Scorer, str]]]:
    """Per probe, the scorers that lack its skill, each with the chance it must sit at; the
    statistics ones learn from `training_words` words of the built-in corpus (seed `seed`)."""
    text = " ".join(documents(seed, training_words)).split()
    vocabulary = set(text)
    unigram, bigram, constant = Unigram(text), Bigram(text), Constant(vocabulary)
    general = [(constant, "items"), (unigram, "items"), (bigram, "items")]
    return {
        "agreement": [*general, (NearestNumber(vocabulary), "items")],
        "length": [*general, (SourceBag(vocabulary), "items"), (NoStopCopier(vocabulary), "items")],
        "nesting": [*general, (KindCounters(vocabulary), "items"), (DepthCounter(vocabulary), "items")],
        "recall": [*general, (TablePosition(vocabulary, last=False), "items"),
                   (TablePosition(vocabulary, last=True), "items")],
        "copy": [(AnyLexiconWord(vocabulary), "lexicon"), (CopyLexicon(text), "lexicon"),
                 (SourceBag(vocabulary), "items")],
    }


SKILL_FREE = ("agreement", "length", "nesting", "recall", "copy")


def table(seed: int = 1234, n: int = 400, training_words: int = 300_000) -> list[Score]:
    """Every skill-free scorer on `n` items of each probe (seed `seed`)."""
    items = probe_items(seed, n)
    return [score(probe, items[probe], scorer, chance) for probe, scorers in skill_free(training_words).items()
            for scorer, chance in scorers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablate.data.skillfree",
                                     description="Score the probes' skill-free scorers on generated items.")
    parser.add_argument("--seed", type=int, default=1234, help="the probe items' seed")
    parser.add_argument("--n", type=int, default=400, help="items per probe")
    args = parser.parse_args(argv)
    print("| probe | skill-free scorer | accuracy | chance | 95% interval of a guesser | at chance |")
    print("|---|---|---|---|---|---|")
    ok = True
    for s in table(args.seed, args.n):
        ok &= s.at_chance
        print(f"| `{s.probe}` | {s.scorer} | {s.accuracy:.3f} ({s.correct}/{s.n}) | {s.chance:.3f} | "
              f"{s.low / s.n:.3f}-{s.high / s.n:.3f} | {'yes' if s.at_chance else 'NO'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
