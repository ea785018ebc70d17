"""`python -m bertspeed COMMAND ...`: the same as the `bertspeed` command."""
from bertspeed.cli import run

run()
