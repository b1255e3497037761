"""`python -m ablate.report`: the same as `ablate-report`."""

import sys

from ablate.report import main

if __name__ == "__main__":
    sys.exit(main())
