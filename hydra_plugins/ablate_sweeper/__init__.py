"""Hydra loads sweepers only from classes defined in the hydra_plugins namespace; the logic is in
ablate.sweep."""

from ablate.sweep import PlanningSweeper


class AblateSweeper(PlanningSweeper):
    """ablate's sweeper: validate every job, plan, skip completed runs (see ablate.sweep)."""
