"""`python -m ablate.train`: the same as `ablate-train` (torchrun and the Slurm templates start it so)."""

from ablate.train import _main

if __name__ == "__main__":
    _main()
