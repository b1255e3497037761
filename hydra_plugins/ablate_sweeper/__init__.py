"""Hydra loads sweepers only from classes defined in the hydra_plugins namespace; the logic is in
ablate.plan.sweep."""

from ablate.plan.sweep import PlanningSweeper, register

register()  # `hydra/sweeper: ablate` in conf/config.yaml: Hydra imports this module before composing


class AblateSweeper(PlanningSweeper):
    """ablate's sweeper: validate every job, plan, skip completed runs (see ablate.plan.sweep)."""
