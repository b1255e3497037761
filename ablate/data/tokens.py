"""Tokenizer and token file: built once per corpus and settings, shared by every run.

A sweep starts all its jobs at once, so each cache entry is built under a file lock by one
process, in a temporary directory renamed into place when complete; the others wait on the lock
and then read it. A half-written entry is never visible under its final name, and the temporary
directory of a builder that was killed is removed by the next one to hold the lock.

A token file is checked against its meta.json before use: its size (tokens x dtype) and a checksum
of 64 blocks spread over it. A damaged entry (truncated, overwritten, meta.json unreadable) is
moved aside as `<entry>.damaged-<time>` with a warning and built again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablate.config import DataConfig
from ablate.data.sources import Source, build_source
from ablate.registry import ConfigError

EOS = "<|endoftext|>"
log = logging.getLogger("ablate.data")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_dir(final: Path, build: Callable[[Path], None], damaged: Callable[[Path], str | None] | None = None) -> Path:
    """`final` if it exists (and `damaged(final)` finds nothing wrong); else build it in a temporary
    sibling (one process at a time) and rename. A damaged entry is moved aside and built again."""
    if final.exists() and (damaged is None or damaged(final) is None):
        return final
    with _locked(final.with_name(final.name + ".lock")):
        for stale in final.parent.glob(final.name + ".tmp-*"):  # a killed builder's (we hold the lock)
            log.warning("removing %s, left by a build that was killed", stale)
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            problem = damaged(final) if damaged is not None else None
            if problem is None:  # another process built it while we waited
                return final
            aside = final.with_name(f"{final.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(final, aside)
            log.warning("the cache entry %s is damaged (%s): moved aside as %s and built again", final, problem,
                        aside.name)
        log.info("building %s (pid %d)", final, os.getpid())
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            build(tmp)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- tokenizer -------------------------------------------------------------------------------------
class Tokenizer:
    """A `tokenizers.Tokenizer` with an end-of-text id; encodes batches of documents fast."""

    def __init__(self, inner, eos_id: int, name: str) -> None:
        self.inner, self.eos_id, self.name = inner, eos_id, name

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.inner.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        from tokenizers import Tokenizer as Inner

        inner = Inner.from_file(str(path))
        eos = inner.token_to_id(EOS)
        if eos is None:
            for candidate in ("</s>", "<eos>", "<|end_of_text|>"):
                eos = inner.token_to_id(candidate)
                if eos is not None:
                    break
        if eos is None:
            raise ConfigError("data.tokenizer", str(path),
                              f"the tokenizer has no end-of-text token ({EOS}, </s>, <eos>)")
        return cls(inner, eos, str(path))


def train_bpe(documents: Iterator[str], vocab_size: int, path: Path) -> None:
    """A byte-level BPE (GPT-2's scheme) trained on `documents`, saved as tokenizer.json."""
    from tokenizers import Tokenizer as Inner
    from tokenizers import decoders, models, pre_tokenizers, trainers

    inner = Inner(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    inner.train_from_iterator(documents, trainer=trainer)
    inner.save(str(path))


def build_tokenizer(cfg: DataConfig, source: Source) -> Tokenizer:
    """Train (cached) a BPE on the corpus, or load a tokenizer.json, or a transformers tokenizer by name."""
    if cfg.tokenizer == "bpe":
        key = _digest(f"{source.key}|bpe|{cfg.vocab_size}|{cfg.tokenizer_documents}")
        final = Path(cfg.cache_dir) / f"tokenizer-{key}"

        def build(tmp: Path) -> None:
            docs = (d for i, d in zip(range(cfg.tokenizer_documents), source.documents()))
            train_bpe(docs, cfg.vocab_size, tmp / "tokenizer.json")

        return Tokenizer.load(cached_dir(final, build) / "tokenizer.json")
    if Path(cfg.tokenizer).is_file():
        return Tokenizer.load(cfg.tokenizer)
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(cfg.tokenizer)
    except Exception as err:  # transformers raises OSError, ValueError, ... for an unknown name
        raise ConfigError("data.tokenizer", cfg.tokenizer,
                          "neither 'bpe', a tokenizer.json file, nor a transformers tokenizer in the local "
                          f"cache ({type(err).__name__})") from err
    if not getattr(hf, "is_fast", False) or hf.eos_token_id is None:
        raise ConfigError("data.tokenizer", cfg.tokenizer, "needs a fast tokenizer with an eos token")
    return Tokenizer(hf.backend_tokenizer, hf.eos_token_id, cfg.tokenizer)


# ---- token file ---------------------------------------------------------------------------------
@dataclass
class TokenData:
    """The tokenized corpus: train and validation token arrays (memory-mapped) and the tokenizer."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    directory: Path
    key: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def prepare(cfg: DataConfig) -> TokenData:
    """Tokenizer and token file for `cfg`, built once (with locking) and then read from the cache."""
    source = build_source(cfg)
    tokenizer = build_tokenizer(cfg, source)
    tok_id = _digest(tokenizer.inner.to_str())
    key = _digest(f"{source.key}|{tok_id}")
    final = Path(cfg.cache_dir) / f"tokens-{key}"
    cached_dir(final, lambda tmp: _write_tokens(source, tokenizer, tmp), damaged=token_file_problem)  # checked
    meta = json.loads((final / "meta.json").read_text())
    tokens = np.memmap(final / "tokens.bin", dtype=meta["dtype"], mode="r")
    held = 2 if cfg.holdout == "validation" else 3  # the tuning split sits before the validation split
    if len(tokens) < held * cfg.val_tokens:
        raise ConfigError("data.val_tokens", cfg.val_tokens, f"the corpus has only {len(tokens)} tokens; hold out "
                          f"at most 1/{held} of it (data.holdout={cfg.holdout})")
    split = len(tokens) - cfg.val_tokens
    if cfg.holdout == "tuning":  # scored on the val_tokens before the validation split, trained on what precedes
        return TokenData(tokens[:split - cfg.val_tokens], tokens[split - cfg.val_tokens:split], tokenizer, final, key)
    return TokenData(tokens[:split], tokens[split:], tokenizer, final, key)


def _write_tokens(source: Source, tokenizer: Tokenizer, directory: Path) -> None:
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    n_tokens = n_docs = 0
    with open(directory / "tokens.bin", "wb") as out:
        batch: list[str] = []
        for doc in source.documents():
            if not doc or doc.isspace():
                continue
            batch.append(doc)
            if len(batch) == 1024:
                n_tokens += _write_batch(out, tokenizer, batch, dtype)
                n_docs, batch = n_docs + len(batch), []
        if batch:
            n_tokens += _write_batch(out, tokenizer, batch, dtype)
            n_docs += len(batch)
        out.flush()
        os.fsync(out.fileno())
    if n_tokens == 0:
        raise ConfigError("data", source.key, "the corpus is empty: no document has any text")
    meta = {"n_tokens": n_tokens, "n_documents": n_docs, "dtype": np.dtype(dtype).name,
            "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "source": source.key,
            "tokenizer": tokenizer.name, "checksum": checksum(directory / "tokens.bin")}
    (directory / "meta.json").write_text(json.dumps(meta, indent=1))


CHECKSUM_BLOCKS, CHECKSUM_BLOCK = 64, 1 << 16  # what a checksum reads: 4 MiB at most, whatever the size


def checksum(path: Path) -> str:
    """A cheap content checksum: the size and 64 blocks of 64 KiB spread evenly over the file (the
    whole file when smaller), so that a truncated, zeroed or overwritten region is found in
    milliseconds even for a corpus of many GB."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        if size <= CHECKSUM_BLOCKS * CHECKSUM_BLOCK:
            digest.update(handle.read())
        else:
            for i in range(CHECKSUM_BLOCKS):
                handle.seek((size - CHECKSUM_BLOCK) * i // (CHECKSUM_BLOCKS - 1))
                digest.update(handle.read(CHECKSUM_BLOCK))
    return digest.hexdigest()


def token_file_problem(directory: Path) -> str | None:
    """What is wrong with a token cache entry, or None: tokens.bin against meta.json's count and dtype,
    and against its checksum (entries written before checksums were kept are checked by size)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        expected = int(meta["n_tokens"]) * np.dtype(meta["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"meta.json cannot be read: {type(err).__name__}"
    path = directory / "tokens.bin"
    if not path.is_file():
        return "tokens.bin is missing"
    size = path.stat().st_size
    if size != expected:
        return (f"tokens.bin has {size:,} bytes; meta.json says {meta['n_tokens']:,} {meta['dtype']} tokens, "
                f"{expected:,} bytes")
    if "checksum" in meta and checksum(path) != meta["checksum"]:
        return "tokens.bin does not match the checksum in meta.json"
    return None


def _write_batch(out, tokenizer: Tokenizer, docs: list[str], dtype) -> int:
    ids = [i for doc in tokenizer.encode_batch(docs) for i in (*doc, tokenizer.eos_id)]
    np.asarray(ids, dtype=dtype).tofile(out)
    return len(ids)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
