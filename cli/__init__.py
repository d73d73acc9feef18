"""The ``rxpath`` command line: a typer app whose commands each live in their own module."""
