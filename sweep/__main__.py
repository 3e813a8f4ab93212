"""`python -m sweep`: the posweep command line."""

from sweep.cli import main

main()
