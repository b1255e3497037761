"""`python -m ablate.evaluate`: the same as `ablate-eval`."""

import sys

from ablate.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
