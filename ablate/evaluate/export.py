"""`ablate-export run=PATH [out=DIR] [checkpoint=FILE]`: a run's final checkpoint (or the one named)
as a transformers model directory (save_pretrained, with its tokenizer), for the variants a
transformers class implements. Default out: <run>/hf."""

from __future__ import annotations

import sys
from pathlib import Path

from ablate.cli import command, key_values
from ablate.data.tokens import EOS, Tokenizer
from ablate.evaluate.lm import load_run
from ablate.registry import ConfigError
from ablate.run.rundir import RunDir

ARGUMENTS = ("run", "out", "checkpoint")  # of ablate-export


def hf_tokenizer(tokenizer: Tokenizer):
    """Our tokenizer as a transformers fast tokenizer, end-of-text as its eos token."""
    from transformers import PreTrainedTokenizerFast

    eos = tokenizer.inner.id_to_token(tokenizer.eos_id) or EOS
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.inner, eos_token=eos)


def export_run(run: str | Path, out: str | Path | None = None, checkpoint: str | Path | None = None) -> Path:
    """Write the transformers model and tokenizer of `run` to `out`; ConfigError when no
    transformers class computes this variant (the message says, family by family, what differs)."""
    from ablate.hf import to_hf

    with RunDir(run).lock():  # no run may be training or evaluating into it meanwhile
        loaded = load_run(run, checkpoint)
        hf_model = to_hf(loaded.model)
        out = Path(out) if out else RunDir(run).hf_dir
        hf_model.save_pretrained(out)
        hf_tokenizer(loaded.tokenizer).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    def body(argv: list[str]) -> int:
        args = key_values(argv, ARGUMENTS)
        if "run" not in args:
            raise ConfigError("run", None, "say which run: run=PATH")
        print(export_run(args["run"], args.get("out"), args.get("checkpoint")))
        return 0

    return command(__doc__, argv, body)


if __name__ == "__main__":
    sys.exit(main())
