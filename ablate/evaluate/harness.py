"""`python -m ablate.evaluate.harness ...`: lm-evaluation-harness's own command line, exactly, with ablate's
model registered (the plain `lm_eval` command cannot see third-party models):

    python -m ablate.evaluate.harness --model ablate --model_args run=results/default/<run> --tasks hellaswag

Add `--include_path <ablate>/tasks` (printed by `python -c "import ablate.evaluate as e; print(e.TASK_DIR)"`)
for ablate's probe tasks; ablate-eval does that, and points them at their generated files, for you.
"""

from lm_eval.__main__ import cli_evaluate

import ablate.evaluate.lm  # noqa: F401  (registers the `ablate` model)

if __name__ == "__main__":
    cli_evaluate()
