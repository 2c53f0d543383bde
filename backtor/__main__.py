"""`python -m backtor`: the same as the `backtor` command."""

import sys

from backtor.runtime.cli import main

sys.exit(main())
