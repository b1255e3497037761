"""Planning an experiment before anything trains: the sweeper (every job checked, the plan
written, completed runs skipped), what the arms hold equal and every confound, the learning-rate
tuning of each arm, and `ablate-model` (a composed model, its facts and memory)."""
