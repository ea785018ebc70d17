"""`python -m bertspeed COMMAND ...`: the same as the `bertspeed` command."""
import sys

from bertspeed.cli import main

sys.exit(main())
