"""Transitional: the scenario dataclasses are moving here from cli.config."""

from cli.config import Scenario  # noqa: F401
