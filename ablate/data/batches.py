"""A batch order that depends on the data seed only.

The training tokens are cut into sequences of seq_len + 1 tokens overlapping by one (inputs and
shifted targets). Sequence number n of the run is chunk perm_e[n mod C] where C is the number of
chunks, e = n // C the epoch and perm_e a permutation drawn from (data seed, e). Step s consumes
sequences [s * B, (s + 1) * B) of a global batch of B sequences; a process takes its own share of
that range, so the global batch is the same for any number of processes, and a resumed run picks
up at the sequence where it stopped.
"""

from __future__ import annotations

import numpy as np
import torch


class Batches:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int) -> None:
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n_chunks = (len(tokens) - 1) // seq_len
        if self.n_chunks < 1:
            raise ValueError(f"{len(tokens)} tokens make no sequence of {seq_len + 1}")
        self._perm: tuple[int, np.ndarray] | None = None

    def chunk(self, n: int) -> int:
        epoch, i = divmod(n, self.n_chunks)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_chunks))
        return int(self._perm[1][i])

    def sequences(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences start .. start + count - 1 of the run: inputs and targets, (count, seq_len) int64."""
        L = self.seq_len
        rows = [np.asarray(self.tokens[c * L: c * L + L + 1], dtype=np.int64)
                for c in (self.chunk(n) for n in range(start, start + count))]
        block = torch.from_numpy(np.stack(rows))
        return block[:, :-1], block[:, 1:]

    def micro_batches(self, step: int, batch: int, micro: int, rank: int = 0, world: int = 1):
        """This process's micro-batches of global step `step` (batch sequences in all, micro per forward)."""
        per_rank = batch // world
        first = step * batch + rank * per_rank
        for offset in range(0, per_rank, micro):
            yield self.sequences(first + offset, micro)


def validation_batches(tokens: np.ndarray, seq_len: int, micro: int):
    """The held-out tokens as consecutive sequences, in order; the same for every run."""
    n = (len(tokens) - 1) // seq_len
    for start in range(0, n, micro):
        idx = range(start, min(start + micro, n))
        block = torch.from_numpy(np.stack([np.asarray(tokens[i * seq_len: i * seq_len + seq_len + 1],
                                                      dtype=np.int64) for i in idx]))
        yield block[:, :-1], block[:, 1:]
