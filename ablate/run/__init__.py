"""What a run is, for every phase to share: its config's lifecycle (derived and checked once per
phase), its distillation teacher as named, its directory (every file of a run, and the lock that
lets one process at a time hold it) and its checkpoints (saved atomically, loaded without running
code)."""
