"""`python -m socksauth`."""

from socksauth.cli import main

main(prog_name="socksauth")
