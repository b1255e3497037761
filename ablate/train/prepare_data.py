"""`ablate-prepare`: build the tokenizer and token cache of a config ahead of training, with the
same config groups and overrides as ablate-train (e.g. on a login node that has network when the
compute nodes do not). A sweep's jobs then only read the cache."""

from __future__ import annotations

from ablate.cli import hydra_app
from ablate.config import RunConfig
from ablate.data.tokens import prepare


def prepare_run(cfg: RunConfig) -> None:
    data = prepare(cfg.data)
    print(f"{data.directory}: {len(data.train):,} training and {len(data.val):,} validation tokens, "
          f"vocabulary {data.vocab_size:,}")


def _main() -> None:
    hydra_app(prepare_run)


if __name__ == "__main__":
    _main()
