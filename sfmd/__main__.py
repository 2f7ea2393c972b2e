"""`python -m sfmd` is `sfmd`."""

import sys

from sfmd.cli import main

sys.exit(main())
