"""`python -m ablate.report`: the same as `ablate-report`."""

import sys

from ablate.report import main

sys.exit(main())
