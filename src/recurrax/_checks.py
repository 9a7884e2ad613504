"""Argument checks shared by the constructors."""

import numpy as np


def check_positive_int(owner: str, name: str, value) -> None:
    """A `ValueError` naming `name` unless `value` is a positive integer (not a bool)."""
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{owner}: `{name}` must be a positive integer, got {name}={value!r}.")
