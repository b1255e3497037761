"""`AblateLM`: lm-evaluation-harness's view of an ablate model, registered as `ablate`.

    AblateLM(run="results/default/<run>")            the run's latest checkpoint and tokenizer
    AblateLM(run=..., checkpoint="path/step_N.pt")   a given checkpoint of that run
    AblateLM(model=transformer, tokenizer=tokenizer) objects already in memory

Requests are batched longest first (padding on the right, which a causal model never sees) and
answered in the order they came. An empty context is conditioned on the end-of-text token, as
lm-eval's own HF backend does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval fills its model registry only while it is empty: built-ins first)
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ablate import checkpoint as ckpt
from ablate.config import RunConfig
from ablate.data.tokens import Tokenizer
from ablate.model import Transformer

log = logging.getLogger("ablate.lm")


class RunError(ValueError):
    """A run directory or checkpoint that cannot be evaluated; the message says what exists."""


def load_run(run: str | Path, checkpoint: str | Path | None = None) -> tuple[Transformer, Tokenizer, RunConfig]:
    """The model (eval mode, CPU), tokenizer and config of a run directory."""
    run = Path(run)
    if not run.is_dir():
        parent = run.parent if run.parent.is_dir() else Path(".")
        runs = sorted(p.name for p in parent.iterdir() if (p / "config.yaml").exists())
        raise RunError(f"no run directory {run}" + (f"; runs in {parent}: {', '.join(runs)}" if runs else ""))
    missing = [name for name in ("config.yaml", "tokenizer.json") if not (run / name).exists()]
    if missing:
        present = sorted(p.name for p in run.iterdir()) or ["nothing"]
        raise RunError(f"{run} is not a trained run: {', '.join(missing)} missing (it holds {', '.join(present)})")
    from omegaconf import OmegaConf

    cfg = RunConfig.from_dict(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))
    if checkpoint is None:
        found = ckpt.checkpoints(run / "checkpoints")
        if not found:
            raise RunError(f"{run} has no checkpoint yet (status: {_status(run)}); train it first")
        checkpoint = found[-1]
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        have = [p.name for p in ckpt.checkpoints(run / "checkpoints")] or ["none"]
        raise RunError(f"no checkpoint {checkpoint}; {run} has: {', '.join(have)}")
    state = ckpt.load(checkpoint)
    model = Transformer(cfg.model)
    model.load_state_dict(state["model"])
    return model.eval(), Tokenizer.load(run / "tokenizer.json"), cfg


def _status(run: Path) -> str:
    path = run / "summary.json"
    return json.loads(path.read_text()).get("status", "unknown") if path.exists() else "never started"


@register_model("ablate")
class AblateLM(TemplateLM):
    def __init__(self, run: str | None = None, checkpoint: str | None = None, model: Transformer | None = None,
                 tokenizer: Tokenizer | None = None, batch_size: int | str = 32, device: str | None = None,
                 max_length: int | str | None = None, threads: int | str | None = None, **kwargs: Any) -> None:
        super().__init__()
        if model is None:
            if run is None:
                raise RunError("AblateLM needs run=PATH (a run directory) or model= and tokenizer=")
            model, tokenizer, _ = load_run(run, checkpoint)
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

        Requests whose model input is the same token sequence (the choices of a multiple-choice
        item, when they differ only in their last token) share one forward pass."""
        inputs: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
        clipped = 0
        for i, (_, context, continuation) in enumerate(requests):
            if len(continuation) > self.max_length:  # only the last max_length tokens can be scored
                continuation, clipped = continuation[-self.max_length:], clipped + 1
            whole = (context + continuation)[-(self.max_length + 1):]
            inputs.setdefault(tuple(whole[:-1]), []).append((i, len(continuation), continuation))
        if clipped:
            log.warning("%d continuations were longer than the context of %d tokens: only their last %d tokens "
                        "were scored", clipped, self.max_length, self.max_length)
        unique = sorted(inputs, key=len, reverse=True)  # longest first: similar lengths share a batch
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        size = override_bs or self.batch_size
        for start in tqdm(range(0, len(unique), size), disable=disable_tqdm, desc="loglikelihood"):
            batch = unique[start:start + size]
            logits = self._logits(batch)  # (b, T, vocab)
            for row, inp in enumerate(batch):
                for i, n, continuation in inputs[inp]:
                    lp = F.log_softmax(logits[row, len(inp) - n: len(inp)].float(), dim=-1)  # (n, vocab)
                    target = torch.tensor(continuation, device=lp.device)
                    out[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return out  # type: ignore[return-value]

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
        """Greedy decoding with the KV cache until a stop string, end of text or max_gen_toks."""
        results = []
        for req in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until", []) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0:
                log.warning("AblateLM decodes greedily; do_sample / temperature are ignored")
            prompt = self.tok_encode(context)[-max(1, self.max_length - max_new):]
            results.append(self._greedy(prompt, until, max_new))
        return results

    def _greedy(self, prompt: list[int], until: list[str], max_new: int) -> str:
        cache = self.model.new_cache()
        logits = self.model(torch.tensor([prompt], device=self._device), cache)
        generated: list[int] = []
        limit = self.model.position.max_len
        for _ in range(max_new):
            nxt = int(logits[0, -1].argmax())
            if nxt == self.eot_token_id:
                break
            generated.append(nxt)
            text = self.tok_decode(generated)
            stops = [text.index(s) for s in until if s and s in text]
            if stops:
                return text[: min(stops)]
            if limit is not None and cache.length >= limit:
                break  # learned positions end here
            logits = self.model(torch.tensor([[nxt]], device=self._device), cache)
        return self.tok_decode(generated)



__all__ = ["AblateLM", "RunError", "load_run"]
