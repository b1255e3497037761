"""`AblateLM`: lm-evaluation-harness's view of an ablate model, registered as `ablate`.

    AblateLM(run="results/default/<run>")            a completed run's final checkpoint and tokenizer
    AblateLM(run=..., checkpoint="step_00000062.pt") a named checkpoint (any run, finished or not)
    AblateLM(model=transformer, tokenizer=tokenizer, max_length=128)   objects already in memory

Requests are batched longest first (padding on the right, which a causal model never sees) and
answered in the order they came. An empty context is conditioned on the end-of-text token, as
lm-eval's own HF backend does. The context is the length the run was trained at (train.seq_len),
never more: a continuation longer than that is scored in pieces, each token predicted from the
tokens truly before it; generation keeps at least half the context for the prompt and stops at
the context's end, and says when that cut a prompt or a generation short.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval fills its model registry only while it is empty: built-ins first)
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ablate.config import RunConfig
from ablate.data.tokens import Tokenizer
from ablate.model import Transformer
from ablate.run import checkpoint as ckpt
from ablate.run import lifecycle
from ablate.run.rundir import RunDir, RunError, runs_in

log = logging.getLogger("ablate.evaluate.lm")


@dataclass
class LoadedRun:
    """A run's model (eval mode, CPU) at one checkpoint, with its tokenizer and config."""

    model: Transformer
    tokenizer: Tokenizer
    cfg: RunConfig
    checkpoint: Path
    step: int
    tokens: int
    final: bool  # the checkpoint a completed run ended with


def load_run(run: str | Path, checkpoint: str | Path | None = None) -> LoadedRun:
    """The model of a run at its final checkpoint, or at `checkpoint` (a path, a file name in the
    run's checkpoints/, or a step) when one is named. A run that has not completed has no final
    model: without a named checkpoint it raises RunError, saying where the run stopped."""
    rd = RunDir(run)
    if not rd.path.is_dir():
        parent = rd.path.parent if rd.path.parent.is_dir() else Path(".")
        runs = [r.name for r in runs_in(parent)]
        raise RunError(f"no run directory {rd.path}" + (f"; runs in {parent}: {', '.join(runs)}" if runs else ""))
    missing = [p.name for p in (rd.config_file, rd.tokenizer_file) if not p.exists()]
    if missing:
        present = sorted(p.name for p in rd.path.iterdir()) or ["nothing"]
        raise RunError(f"{rd.path} is not a trained run: {', '.join(missing)} missing (it holds {', '.join(present)})")
    have = [p.name for p in rd.checkpoints()] or ["none"]
    if checkpoint is None:
        path = rd.final_checkpoint()
        if path is None:
            summary = rd.summary() or {}
            where = f"at step {summary.get('step', 0)} of {summary.get('steps_total', '?')}"
            if not rd.checkpoints():
                raise RunError(f"{rd.path} has no checkpoint yet (status: {rd.status()}); train it first")
            raise RunError(f"{rd.path} is {rd.status()} {where}: it has no final model. To evaluate a checkpoint of "
                           f"it anyway, name one: checkpoint={rd.checkpoints()[-1].name} "
                           f"(checkpoints: {', '.join(have)})")
    else:
        path = rd.checkpoint_of(checkpoint)
    if not path.exists():
        raise RunError(f"no checkpoint {path}; {rd.path} has: {', '.join(have)}")
    cfg = lifecycle.for_load(RunConfig.from_dict(rd.read_config()))  # no teacher, no tracker needed
    state = ckpt.load(path)
    model = Transformer(cfg.model)
    ckpt.restore(state, model)
    final = rd.final_checkpoint()
    return LoadedRun(model.eval(), Tokenizer.load(rd.tokenizer_file), cfg, path, int(state["state"]["step"]),
                     int(state["state"]["tokens"]), final is not None and final.resolve() == path.resolve())


@register_model("ablate")
class AblateLM(TemplateLM):
    def __init__(self, run: str | None = None, checkpoint: str | None = None, model: Transformer | None = None,
                 tokenizer: Tokenizer | None = None, batch_size: int | str = 32, device: str | None = None,
                 max_length: int | str | None = None, threads: int | str | None = None, **kwargs: Any) -> None:
        super().__init__()
        if model is None:
            if run is None:
                raise RunError("AblateLM needs run=PATH (a run directory) or model= and tokenizer=")
            loaded = load_run(run, checkpoint)
            model, tokenizer = loaded.model, loaded.tokenizer
            max_length = max_length or loaded.cfg.seq_len  # the length it was trained at
        elif tokenizer is None:
            raise RunError("AblateLM(model=...) needs tokenizer= too")
        if threads:
            torch.set_num_threads(int(threads))
        want_cuda = str(device or "").startswith("cuda")
        if want_cuda and not torch.cuda.is_available():
            log.warning("device %s asked for but no CUDA device is visible: running on CPU", device)
        self._device = torch.device(device if want_cuda and torch.cuda.is_available() else "cpu")
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32  # "auto" is not searched
        # The context: the length the model was trained at. Positions beyond it were never
        # trained (a learned table's rows there are still at their initial values).
        self.max_length = int(max_length) if max_length else model.cfg.max_seq_len

    # ---- what TemplateLM needs ---------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        """Each request: (key, context tokens, continuation tokens) -> (log p(continuation), greedy?).

        A continuation longer than the context is scored in pieces of at most max_length tokens,
        each piece after all that precedes it, so every token is predicted from the (up to
        max_length) tokens truly before it. Pieces whose model input is the same token sequence
        (the choices of a multiple-choice item, when they differ only in their last token) share
        one forward pass."""
        L = self.max_length
        inputs: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
        long = 0
        for i, (_, context, continuation) in enumerate(requests):
            long += len(continuation) > L
            for start in range(0, len(continuation), L):
                piece = continuation[start:start + L]
                whole = (context + continuation[:start] + piece)[-(L + 1):]
                inputs.setdefault(tuple(whole[:-1]), []).append((i, len(piece), piece))
        if long:
            log.info("%d continuations were longer than the context of %d tokens: scored in pieces, each token "
                     "from the %d tokens before it", long, L, L)
        unique = sorted(inputs, key=len, reverse=True)  # longest first: similar lengths share a batch
        logprob, greedy = [0.0] * len(requests), [True] * len(requests)
        size = override_bs or self.batch_size
        for start in tqdm(range(0, len(unique), size), disable=disable_tqdm, desc="loglikelihood"):
            batch = unique[start:start + size]
            logits = self._logits(batch)  # (b, T, vocab)
            for row, inp in enumerate(batch):
                for i, n, piece in inputs[inp]:
                    lp = F.log_softmax(logits[row, len(inp) - n: len(inp)].float(), dim=-1)  # (n, vocab)
                    target = torch.tensor(piece, device=lp.device)
                    logprob[i] += float(lp.gather(1, target[:, None]).sum())
                    greedy[i] = greedy[i] and bool((lp.argmax(-1) == target).all())
        bad = sum(not math.isfinite(v) and not v == -math.inf for v in logprob)  # NaN or +inf
        if bad:  # lm-eval's argmax would pick the first choice on NaN: a score of 100% on a minimal pair
            raise RunError(f"the model's log-likelihood is NaN for {bad} of {len(requests)} requests: a diverged or "
                           "broken model cannot be scored (NaN is an error, not an answer)")
        return list(zip(logprob, greedy))

    def _logits(self, inputs: list[tuple[int, ...]]) -> torch.Tensor:
        """Right-padded batch forward; padding sits after every real token, so a causal model never sees it."""
        longest = max(len(x) for x in inputs)
        batch = torch.zeros(len(inputs), longest, dtype=torch.long)
        for row, x in enumerate(inputs):
            batch[row, : len(x)] = torch.tensor(x)
        return self.model(batch.to(self._device))

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each document, in windows of the model's context."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for context, pred in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, pred))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += logprob
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding with the KV cache until a stop string, end of text, max_gen_toks or the
        end of the context. The prompt keeps its last max_length - max_gen_toks tokens, but never
        fewer than half the context: a max_gen_toks that would leave less (lm-eval's default of
        256 against a 256-token model) cannot silently reduce a prompt to its last token."""
        results, cut_prompts, short = [], 0, 0
        for req in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until", []) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0:
                log.warning("AblateLM decodes greedily; do_sample / temperature are ignored")
            tokens = self.tok_encode(context)
            budget = max(self.max_length - max_new, self.max_length // 2)
            prompt = tokens[-budget:]
            cut_prompts += len(prompt) < len(tokens)
            short += len(prompt) + max_new > self.max_length
            results.append(self._greedy(prompt, until, min(max_new, self.max_length - len(prompt))))
        if cut_prompts:
            log.warning("%d of %d prompts were longer than their budget and kept only their last tokens (the context "
                        "is %d tokens)", cut_prompts, len(requests), self.max_length)
        if short:
            log.warning("%d of %d generations could not have their max_gen_toks within the %d-token context: they "
                        "stop at its end (prompts keep at least %d tokens)", short, len(requests), self.max_length,
                        self.max_length // 2)
        return results

    def _greedy(self, prompt: list[int], until: list[str], max_new: int) -> str:
        cache = self.model.new_cache()
        logits = self.model(torch.tensor([prompt], device=self._device), cache)
        generated: list[int] = []
        for step in range(max_new):
            nxt = int(logits[0, -1].argmax())
            if nxt == self.eot_token_id:
                break
            generated.append(nxt)
            text = self.tok_decode(generated)
            stops = [text.index(s) for s in until if s and s in text]
            if stops:
                return text[: min(stops)]
            if step + 1 < max_new:
                logits = self.model(torch.tensor([[nxt]], device=self._device), cache)
        return self.tok_decode(generated)


__all__ = ["AblateLM", "LoadedRun", "RunError", "load_run"]
