"""`ablate-prepare`: build the tokenizer and token cache of a config ahead of training, with the
same config groups and overrides as ablate-train (e.g. on a login node that has network when the
compute nodes do not). A sweep's jobs then only read the cache."""

from __future__ import annotations

import logging
from typing import Any

from ablate.config import register_configs
from ablate.data.tokens import prepare

log = logging.getLogger("ablate.prepare")


def _main() -> None:
    import hydra

    from ablate.train import CONF_DIR, run_config, user_errors

    register_configs()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def app(node) -> Any:
        with user_errors():
            data = prepare(run_config(node).data)
        print(f"{data.directory}: {len(data.train):,} training and {len(data.val):,} validation tokens, "
              f"vocabulary {data.vocab_size:,}")

    app()


if __name__ == "__main__":
    _main()
