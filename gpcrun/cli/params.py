"""Option types shared by the commands."""
from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (a NaN compares false with every bound and would pass; an
    infinite margin or timeout overflows where it becomes an integer): a one-line usage error, exit 2."""

    name = "finite float"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v
