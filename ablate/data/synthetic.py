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

import itertools
import json
import random
import zlib
from collections import Counter
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
# (singular, plural, past): the past form does not show number, so before a reflexive it leaves the
# reflexive's number to be found from the subject
REFLEXIVE_VERBS = [("admires", "admire", "admired"), ("defends", "defend", "defended"), ("blames", "blame", "blamed"),
                   ("trusts", "trust", "trusted"), ("washes", "wash", "washed"),
                   ("describes", "describe", "described")]
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
_SIGNATURE = {**{pl: sg for sg, pl, *_ in VERBS_T + VERBS_I + REFLEXIVE_VERBS},
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

    def _intervening(self, n: int, last_plural: bool | None = None) -> str:
        """n phrases between subject and verb, each with an attractor noun of random number (the
        last one's number is `last_plural` where given)."""
        rng, parts = self.rng, []
        for i in range(n):
            plural = last_plural if i == n - 1 else None
            if rng.random() < 0.5:
                parts.append(f"{rng.choice(PREPOSITIONS)} {self._np(plural)[0]}")
            else:
                noun, plural, _ = self._np(plural)
                verb = rng.choice(VERBS_T)[1 if plural else 0]
                # "that the dogs see": the relative clause's own subject agrees with its own verb
                parts.append(f"that {noun} {verb}")
        return " ".join(parts)

    def agreement_pair(self, plural: bool | None = None, attracted: bool | None = None,
                       phenomenon: str | None = None, distance: int | None = None, past: bool | None = None) -> Pair:
        """A minimal pair on the number of a verb or a reflexive. Left as None, each choice is drawn:
        `plural` the subject's number; `attracted` whether the last number-marked word before the
        agreeing word (an attractor noun or a relative clause's verb) has the subject's number;
        `phenomenon` subject_verb or anaphor; `distance` 0-4 intervening phrases; `past` whether a
        reflexive's verb is in the past tense, which does not show number."""
        rng = self.rng
        subject, plural, gender = self._np(plural)
        distance = rng.randint(0, 4) if distance is None else distance
        last = None if attracted is None else (plural if attracted else not plural)
        middle = self._intervening(distance, last)
        head = f"{subject} {middle}".strip()
        phenomenon = phenomenon or ("subject_verb" if rng.random() < 0.5 else "anaphor")
        if phenomenon == "subject_verb":
            verb = rng.choice(VERBS_T + VERBS_I)
            tail = f" {self._np()[0]}" if verb in VERBS_T else (f" {rng.choice(ADVERBS)}" if rng.random() < 0.5 else "")
            good = f"{head} {verb[1 if plural else 0]}{tail} ."
            bad = f"{head} {verb[0 if plural else 1]}{tail} ."
            return Pair(good, bad, "subject_verb", distance)
        forms = rng.choice(REFLEXIVE_VERBS)
        past = rng.random() < 0.5 if past is None else past
        verb = forms[2] if past else forms[1 if plural else 0]
        # number only: the wrong reflexive is the right one's other number, of the subject's gender
        right, wrong = ("themselves", REFLEXIVE[gender]) if plural else (REFLEXIVE[gender], "themselves")
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

    Each probe isolates one skill: a scorer without it, however good at everything else, sits at
    chance (the skill-free scorers of `ablate.data.skillfree` show it, in the tests). The minimal
    pairs carry BLiMP's fields (sentence_good, sentence_bad) and `choices` with the grammatical
    sentence at `gold`, 0 or 1 in turn, so a scorer that ties (or always picks one side) scores 0.5.
    Their design factors cycle in a fixed order, so any first N items are balanced.

    agreement: number agreement with the subject across 1-4 intervening phrases. The number of the
               subject, and whether the last number-marked word before the agreeing word (an
               attractor noun, or a relative clause's verb) has the subject's number (`attracted`),
               are balanced: agreeing with the nearest noun, or any bigram statistic, scores chance.
               subject_verb: the verb's number; anaphor: a reflexive after a past-tense verb (which
               does not show number): "themselves" against the singular of the subject's gender.
    recall:    context ending in "ask KEY", choices = every value of the table, gold = the index; the
               values of a table are distinct and each table is asked for every key (`slot` says
               which), so a preference for a value or a place in the table scores chance exactly;
               `n_pairs` 2-8; the queries of one table share a `cluster`.
    copy:      one row per word of a span: context "copy : SPAN | w1 .. w(j-1)", continuation " wj"
               (so the score is per word: partial copies count), `item` and `position` say which, the
               rows of one span share a `cluster`; n // 5 spans (at least 10) of 8-20 words, about 2.8 n
               rows. `source_chance`: the accuracy of picking any (distinct) word of the span at random.
    length:    where a copy ends: "copy : S | S ." against the same source with a copy one word
               short or (in turn) one word long (the extra word is the source's first, where a copier
               that does not stop would go on); `length` is |S| (6-16), `longer` which. A scorer that
               does not know where a copy ends prefers the shorter sentence either way: chance.
    nesting:   a balanced sequence of two kinds of bracket against the same with two closers of
               different kinds swapped: every per-kind count stays balanced and never negative (a
               counter per kind without a stack cannot tell), and each swapped closer follows a
               closer (the token before it says nothing); `n_pairs`, and `depth` and `distance`
               (tokens back to its opener) of the first swapped closer, `gap` to the second.
    """
    lang = Language(seed)
    # in this order: each draws from the language's one generator
    return {"agreement": _agreement_items(lang, n), "recall": _recall_items(lang, n), "copy": _copy_items(lang, n),
            "length": _length_items(lang, n), "nesting": _nesting_items(lang, n)}


def _agreement_items(lang: Language, n: int) -> list[dict]:
    items = []
    for i in range(n):
        plural, attracted, phenomenon = bool(i // 2 % 2), bool(i // 4 % 2), ("subject_verb", "anaphor")[i // 8 % 2]
        while True:
            pair = lang.agreement_pair(plural, attracted, phenomenon, lang.rng.randint(1, 4), past=True)
            if reserved(pair.good):  # and so pair.bad: they share a signature
                break
        items.append({**_pair(pair.good, pair.bad, i % 2), "phenomenon": pair.phenomenon,
                      "distance": pair.distance, "plural": plural, "attracted": attracted})
    return items


def _recall_items(lang: Language, n: int) -> list[dict]:
    items, tables = [], 0
    while len(items) < n:  # every key of a table asked once: a preference for some value or
        table, pairs = lang.recall(n_pairs=lang.rng.randint(2, 8), distinct=True)  # slot scores chance
        if reserved(table):
            choices = sorted(v for _, v in pairs)
            items += [{"context": f"{table} ask {key}", "choices": choices, "gold": choices.index(value),
                       "n_pairs": len(pairs), "slot": i, "cluster": tables}
                      for i, (key, value) in enumerate(pairs)]
            tables += 1
    return items


def _copy_items(lang: Language, n: int) -> list[dict]:
    items, spans = [], 0
    while spans < max(10, n // 5):
        span = lang.copy_span(lang.rng.randint(8, 20))
        if reserved(span):
            words = span.split()
            items += [{"context": f"copy : {span} |" + "".join(f" {w}" for w in words[:j]),
                       "continuation": f" {words[j]}", "item": spans, "position": j, "cluster": spans,
                       "source_chance": 1 / len(set(words))}
                      for j in range(len(words))]
            spans += 1
    return items


def _length_items(lang: Language, n: int) -> list[dict]:
    items = []
    for i in range(n):
        longer = bool(i % 2)
        while True:
            words = lang.copy_span(lang.rng.randint(6, 16)).split(" ")
            if reserved(" ".join(words)):
                break
        span = " ".join(words)
        copy = [*words, words[0]] if longer else words[:-1]
        items.append({**_pair(f"copy : {span} | {span} .", f"copy : {span} | {' '.join(copy)} .", i // 2 % 2),
                      "length": len(words), "longer": longer})
    return items


def _nesting_items(lang: Language, n: int) -> list[dict]:
    items = []
    while len(items) < n:
        tokens = lang.brackets()
        sequence = " ".join(tokens)
        if not reserved(sequence):  # most are not: the search for a swap is for those that are
            continue
        swaps = _swaps(tokens)
        if swaps:
            wrong = lang.rng.choice(swaps)
            a, b = (i for i, (t, w) in enumerate(zip(tokens, wrong)) if t != w)
            opener, depth = _opener(tokens, a)
            pair = _pair(f"nest : {sequence} .", f"nest : {' '.join(wrong)} .", len(items) % 2)
            items.append({**pair, "n_pairs": len(tokens) // 2, "depth": depth, "distance": a - opener, "gap": b - a})
    return items


def _swaps(tokens: list[str]) -> list[list[str]]:
    """Every sequence made by swapping two closers of different kinds, each after a closer, the
    second's opener before the first, that keeps the neighbour-pair counts (`_transitions`)."""
    swaps = []
    for a in range(1, len(tokens)):
        for b in range(a + 1, len(tokens)):
            if (tokens[a] in CLOSERS and tokens[b] in CLOSERS and tokens[a] != tokens[b]
                    and tokens[a - 1] in CLOSERS and tokens[b - 1] in CLOSERS and _opener(tokens, b)[0] < a):
                wrong = list(tokens)
                wrong[a], wrong[b] = tokens[b], tokens[a]
                if _transitions(wrong) == _transitions(tokens):
                    swaps.append(wrong)
    return swaps


def _pair(good: str, bad: str, gold: int) -> dict:
    """A minimal pair in BLiMP's fields, with its choices in the order that puts the good one at `gold`."""
    return {"sentence_good": good, "sentence_bad": bad, "choices": [good, bad] if gold == 0 else [bad, good],
            "gold": gold}


def _transitions(tokens: list[str]) -> Counter:
    """How often a bracket follows a bracket of the same kind and of the other, by opener / closer:
    what a bigram model sees of a sequence once the kinds' names are set aside."""
    kind = {t: i for i, t in enumerate(OPENERS)} | {t: i for i, t in enumerate(CLOSERS)}
    return Counter((a in OPENERS, b in OPENERS, kind[a] == kind[b]) for a, b in itertools.pairwise(tokens))


def _opener(tokens: list[str], at: int) -> tuple[int, int]:
    """The index of the opener that the closer at `at` matches, and the depth there (1: outermost)."""
    stack = []
    for i, t in enumerate(tokens[:at]):
        if t in OPENERS:
            stack.append(i)
        else:
            stack.pop()
    return stack[-1], len(stack)


# The copy probe's accuracy by guessing a word of the copy lexicon (a model that has not found the
# source); one that picks any word of the source scores each row's `source_chance` (about 1/14).
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
