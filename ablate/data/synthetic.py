"""The built-in corpus: a small English-like language whose structure separates architectures.

Four kinds of segment, mixed within each document (shares in SEGMENT_MIX):

    agreement  "the tall dog near the red cats that sees the bird quickly runs ."
               subject-verb number agreement and reflexive (himself / herself / itself / themselves)
               agreement across 0-4 intervening phrases whose nouns act as attractors
    recall     "table : zuka lo , mibe ra , ... . ask mibe ra ask zuka lo ."
               key-value pairs then queries (multi-query associative recall, as in Zoology)
    copy       "copy : w1 w2 ... wn | w1 w2 ... wn ."
               a random span repeated (copying / induction heads; where the copy ends is a matter
               of counting: it is as long as its source)
    nesting    "nest : ( [ ] ( ) ) ."
               balanced brackets of two kinds, up to 4 deep: each closer matches the innermost
               open bracket (a stack, read at a distance)

What a small model learns first differs by kind. At the quickstart's budget (about 100 steps of a
4-layer, 128-wide model) agreement, nesting and the copy's length are learned, while recalling a
value or copying a word, which need induction heads, stay at chance; they separate architectures
at larger budgets (README: probes).

Everything is a pure function of a seed: no files are shipped and nothing is downloaded. Probe
items for evaluation come from another seed and from a reserved slice of the item space (a CRC of
the item's text), which training text never draws from: no probe appears in training.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# ---- lexicon ----------------------------------------------------------------------------------
# (singular, plural, gender): gender picks the singular reflexive.
NOUNS = [
    ("man", "men", "m"), ("woman", "women", "f"), ("boy", "boys", "m"), ("girl", "girls", "f"),
    ("king", "kings", "m"), ("queen", "queens", "f"), ("father", "fathers", "m"), ("mother", "mothers", "f"),
    ("brother", "brothers", "m"), ("sister", "sisters", "f"), ("prince", "princes", "m"),
    ("princess", "princesses", "f"), ("uncle", "uncles", "m"), ("aunt", "aunts", "f"), ("child", "children", "n"),
    ("dog", "dogs", "n"), ("cat", "cats", "n"), ("bird", "birds", "n"), ("horse", "horses", "n"),
    ("fox", "foxes", "n"), ("mouse", "mice", "n"), ("wolf", "wolves", "n"), ("robot", "robots", "n"),
    ("teacher", "teachers", "n"), ("doctor", "doctors", "n"), ("farmer", "farmers", "n"),
    ("painter", "painters", "n"), ("singer", "singers", "n"), ("sailor", "sailors", "n"),
    ("baker", "bakers", "n"), ("student", "students", "n"), ("friend", "friends", "n"),
]
OBJECTS = ["house", "river", "tree", "garden", "box", "door", "table", "hill", "bridge", "window", "road",
           "stone", "lamp", "boat", "wall", "field", "tower", "forest", "market", "castle"]
ADJECTIVES = ["tall", "small", "old", "young", "red", "green", "quiet", "loud", "happy", "sad", "brave", "clever",
              "tired", "kind", "strange", "gentle", "proud", "busy", "lazy", "calm"]
# (singular, plural) transitive verbs, and intransitive ones.
VERBS_T = [("sees", "see"), ("likes", "like"), ("helps", "help"), ("finds", "find"), ("follows", "follow"),
           ("knows", "know"), ("watches", "watch"), ("calls", "call"), ("meets", "meet"), ("praises", "praise")]
VERBS_I = [("runs", "run"), ("sleeps", "sleep"), ("sings", "sing"), ("waits", "wait"), ("laughs", "laugh"),
           ("works", "work"), ("smiles", "smile"), ("jumps", "jump"), ("dances", "dance"), ("falls", "fall")]
REFLEXIVE_VERBS = [("admires", "admire"), ("hurts", "hurt"), ("blames", "blame"), ("trusts", "trust"),
                   ("washes", "wash"), ("describes", "describe")]
PREPOSITIONS = ["near", "behind", "with", "beside", "under", "above", "beyond", "around"]
ADVERBS = ["quickly", "slowly", "often", "rarely", "again", "today", "loudly", "softly"]
REFLEXIVE = {"m": "himself", "f": "herself", "n": "itself"}
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
KEYS = sorted({c1 + v1 + c2 + v2 for c1 in _CONSONANTS for v1 in _VOWELS for c2 in _CONSONANTS[::2]
               for v2 in _VOWELS[:3]})[::7]  # ~150 two-syllable code words
VALUES = sorted({c + v for c in _CONSONANTS for v in _VOWELS})  # 70 one-syllable values
COPY_WORDS = sorted({w for n in NOUNS for w in n[:2]} | set(OBJECTS) | set(ADJECTIVES) | set(ADVERBS)
                    | {w for v in VERBS_T + VERBS_I for w in v} | set(VALUES))

OPENERS, CLOSERS = ("(", "["), (")", "]")
SEGMENT_MIX = {"agreement": 0.45, "recall": 0.15, "copy": 0.25, "nesting": 0.15}
MAX_DEPTH = 4  # of the bracket sequences

PROBE_SLICE = 64  # items whose signature's CRC % PROBE_SLICE == 0 belong to the probes only
# A minimal pair's two sentences differ in one agreeing word; the signature erases that difference
# so that both sentences of a pair are reserved together.
_SIGNATURE = {**{pl: sg for sg, pl in VERBS_T + VERBS_I + REFLEXIVE_VERBS},
              **{r: "<self>" for r in (*REFLEXIVE.values(), "themselves")}}


def reserved(text: str) -> bool:
    """Whether `text` lies in the slice of item space kept for probes."""
    signature = " ".join(_SIGNATURE.get(w, w) for w in text.split(" "))
    return zlib.crc32(signature.encode()) % PROBE_SLICE == 0


def _views(sentence: str) -> list[str]:
    """Every suffix of a sentence that starts a noun phrase: a probe sentence could hide in any."""
    words = sentence.split(" ")
    return [" ".join(words[i:]) for i, w in enumerate(words) if w == "the"]


@dataclass(frozen=True)
class Pair:
    """A minimal pair: the grammatical sentence, the ungrammatical one, what differs, how far."""

    good: str
    bad: str
    phenomenon: str
    distance: int


# ---- generators -------------------------------------------------------------------------------
class Language:
    """Draws segments and probe items from one random.Random."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _np(self, plural: bool | None = None, adjective: float = 0.5) -> tuple[str, bool, str]:
        """A noun phrase: (text, is plural, gender)."""
        rng = self.rng
        sg, pl, gender = rng.choice(NOUNS)
        plural = rng.random() < 0.5 if plural is None else plural
        words = ["the"] + ([rng.choice(ADJECTIVES)] if rng.random() < adjective else []) + [pl if plural else sg]
        return " ".join(words), plural, gender

    def _intervening(self, n: int) -> str:
        """n phrases between subject and verb, each with an attractor noun of random number."""
        rng, parts = self.rng, []
        for _ in range(n):
            if rng.random() < 0.5:
                parts.append(f"{rng.choice(PREPOSITIONS)} {self._np()[0]}")
            else:
                noun, plural, _ = self._np()
                verb = rng.choice(VERBS_T)[1 if plural else 0]
                # "that the dogs see": the relative clause's own subject agrees with its own verb
                parts.append(f"that {noun} {verb}")
        return " ".join(parts)

    def agreement_pair(self) -> Pair:
        rng = self.rng
        subject, plural, gender = self._np()
        distance = rng.randint(0, 4)
        middle = self._intervening(distance)
        head = f"{subject} {middle}".strip()
        if rng.random() < 0.5:
            verb = rng.choice(VERBS_T + VERBS_I)
            tail = f" {self._np()[0]}" if verb in VERBS_T else (f" {rng.choice(ADVERBS)}" if rng.random() < 0.5 else "")
            good = f"{head} {verb[1 if plural else 0]}{tail} ."
            bad = f"{head} {verb[0 if plural else 1]}{tail} ."
            return Pair(good, bad, "subject_verb", distance)
        verb = rng.choice(REFLEXIVE_VERBS)[1 if plural else 0]
        right = "themselves" if plural else REFLEXIVE[gender]
        wrong = REFLEXIVE[gender] if plural else rng.choice(
            [r for r in (*REFLEXIVE.values(), "themselves") if r != right])
        return Pair(f"{head} {verb} {right} .", f"{head} {verb} {wrong} .", "anaphor", distance)

    def recall(self, n_pairs: int | None = None, distinct: bool = False) -> tuple[str, list[tuple[str, str]]]:
        """'table : k v , ... .' and the (key, value) pairs, in order (`distinct`: no value twice)."""
        rng = self.rng
        n_pairs = n_pairs or rng.randint(3, 12)
        keys = rng.sample(KEYS, n_pairs)
        values = rng.sample(VALUES, n_pairs) if distinct else [rng.choice(VALUES) for _ in keys]
        table = "table : " + " , ".join(f"{k} {v}" for k, v in zip(keys, values)) + " ."
        return table, list(zip(keys, values))

    def copy_span(self, length: int | None = None) -> str:
        return " ".join(self.rng.choices(COPY_WORDS, k=length or self.rng.randint(5, 20)))

    def brackets(self, n_pairs: int | None = None) -> list[str]:
        """A balanced sequence of n_pairs bracket pairs of two kinds, at most MAX_DEPTH deep."""
        rng, out, stack = self.rng, [], []
        left = n_pairs or rng.randint(2, 8)
        while left or stack:
            if left and (not stack or (len(stack) < MAX_DEPTH and rng.random() < 0.5)):
                kind = rng.randrange(2)
                stack.append(kind)
                out.append(OPENERS[kind])
                left -= 1
            else:
                out.append(CLOSERS[stack.pop()])
        return out

    def segment(self) -> tuple[str, list[str]]:
        """A training segment and the texts in it that a probe item could equal."""
        r, mix = self.rng.random(), SEGMENT_MIX
        if r < mix["agreement"]:
            good = self.agreement_pair().good
            return good, _views(good)
        r -= mix["agreement"]
        if r < mix["recall"]:
            table, pairs = self.recall()
            asked = self.rng.sample(pairs, self.rng.randint(1, len(pairs)))
            return table + "".join(f" ask {k} {v}" for k, v in asked) + " .", [table]
        r -= mix["recall"]
        if r < mix["copy"]:
            span = self.copy_span()
            return f"copy : {span} | {span} .", [span]
        sequence = " ".join(self.brackets())
        return f"nest : {sequence} .", [sequence]


def documents(seed: int, n_words: int, words_per_doc: int = 200) -> Iterator[str]:
    """Training documents of about `words_per_doc` words, about `n_words` words in all; segments in
    the probe slice are skipped."""
    lang, total = Language(seed), 0
    while total < n_words:
        parts, count = [], 0
        while count < words_per_doc:
            segment, views = lang.segment()
            if any(reserved(v) for v in views):
                continue
            parts.append(segment)
            count += segment.count(" ") + 1
        total += count
        yield " ".join(parts)


# ---- probes -----------------------------------------------------------------------------------
def probe_items(seed: int, n: int) -> dict[str, list[dict]]:
    """n items of each probe task, all inside the reserved slice (so none was ever trained on).

    agreement: BLiMP's fields (sentence_good, sentence_bad) plus phenomenon and distance, and the
               pair as `choices` (good first), which the task reads without a template.
    recall:    context ending in "ask KEY", choices = every value of the table, gold = the index; the
               values of a table are distinct and each table is asked for every key (`slot` says
               which), so a preference for a value or a place in the table scores chance exactly;
               `n_pairs` 2-8.
    copy:      one row per word of a span: context "copy : SPAN | w1 .. w(j-1)", continuation " wj"
               (so the score is per word: partial copies count), `item` and `position` say which;
               n // 5 spans (at least 10) of 8-20 words, about 2.8 n rows.
    length:    minimal pairs on where a copy ends: "copy : S | S ." against "copy : S w | S' ." whose
               source is one word longer and whose copy stops one word short (the same words in
               all); `length` is |S| (6-16). The words are known; only counting tells them apart.
    nesting:   minimal pairs of bracket sequences: a balanced one against the same with one closer
               of the wrong kind, a closer with at least one pair between it and its opener (an
               adjacent pair is told by the previous token alone); `n_pairs`, and `depth` and
               `distance` (tokens back to its opener) of the changed closer.
    """
    lang = Language(seed)
    out: dict[str, list[dict]] = {"agreement": [], "recall": [], "copy": [], "length": [], "nesting": []}
    while len(out["agreement"]) < n:
        pair = lang.agreement_pair()
        if reserved(pair.good):  # and so pair.bad: they share a signature
            out["agreement"].append({"sentence_good": pair.good, "sentence_bad": pair.bad,
                                     "phenomenon": pair.phenomenon, "distance": pair.distance,
                                     "choices": [pair.good, pair.bad]})
    while len(out["recall"]) < n:  # every key of a table asked once: a preference for some value or
        table, pairs = lang.recall(n_pairs=lang.rng.randint(2, 8), distinct=True)  # slot scores chance
        if reserved(table):
            choices = sorted(v for _, v in pairs)
            out["recall"] += [{"context": f"{table} ask {key}", "choices": choices, "gold": choices.index(value),
                               "n_pairs": len(pairs), "slot": i} for i, (key, value) in enumerate(pairs)]
    spans = 0
    while spans < max(10, n // 5):
        span = lang.copy_span(lang.rng.randint(8, 20))
        if reserved(span):
            words = span.split()
            out["copy"] += [{"context": f"copy : {span} |" + "".join(f" {w}" for w in words[:j]),
                             "continuation": f" {words[j]}", "item": spans, "position": j}
                            for j in range(len(words))]
            spans += 1
    while len(out["length"]) < n:
        length = lang.rng.randint(6, 16)
        words = lang.copy_span(length + 1).split(" ")
        span = " ".join(words[:length])
        if reserved(span):
            good = f"copy : {span} | {span} ."
            bad = f"copy : {' '.join(words)} | {' '.join(words[:length - 1])} ."
            out["length"].append({"sentence_good": good, "sentence_bad": bad, "length": length,
                                  "choices": [good, bad]})
    while len(out["nesting"]) < n:
        tokens = lang.brackets()
        sequence = " ".join(tokens)
        far = [i for i, t in enumerate(tokens) if t in CLOSERS and _opener(tokens, i)[0] < i - 1]
        if far and reserved(sequence):  # a closer with something between it and its opener
            at = lang.rng.choice(far)
            opener, depth = _opener(tokens, at)
            wrong = list(tokens)
            wrong[at] = CLOSERS[1 - CLOSERS.index(tokens[at])]
            good, bad = f"nest : {sequence} .", f"nest : {' '.join(wrong)} ."
            out["nesting"].append({"sentence_good": good, "sentence_bad": bad, "n_pairs": len(tokens) // 2,
                                   "depth": depth, "distance": at - opener, "choices": [good, bad]})
    return out


def _opener(tokens: list[str], at: int) -> tuple[int, int]:
    """The index of the opener that the closer at `at` matches, and the depth there (1: outermost)."""
    stack = []
    for i, t in enumerate(tokens[:at]):
        if t in OPENERS:
            stack.append(i)
        else:
            stack.pop()
    return stack[-1], len(stack)


# Accuracy a model gets by guessing, per probe (agreement and recall: one over the number of
# choices, computed from the items themselves; copy: one word of the copy lexicon at random).
COPY_CHANCE = 1 / len(COPY_WORDS)


def write_probes(directory: str | Path, seed: int = 1234, n: int = 500) -> dict[str, Path]:
    """Write each probe task as `<directory>/<task>.jsonl`; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for task, items in probe_items(seed, n).items():
        path = directory / f"{task}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(item) + "\n" for item in items))
        tmp.replace(path)
        paths[task] = path
    return paths
