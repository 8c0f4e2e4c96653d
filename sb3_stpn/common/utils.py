"""Checks of user-given values that several parts of the package share."""

import numbers
from typing import Any


def is_integer(value: Any) -> bool:
    """True for integers (Python or NumPy), excluding ``bool``: a flag passed where a count belongs is a mistake."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: Any, name: str, alternative: str = "", whole_floats: bool = False) -> int:
    """
    ``value`` as an ``int`` if it is a positive integer, else a ``ValueError`` that names it.

    :param value: The value to check.
    :param name: What the value is, as the message names it (``"STPN hidden_size"``).
    :param alternative: What else the caller accepts (checked there), said after "a positive integer" in the
        message, e.g. ``" (or None for n_steps)"``.
    :param whole_floats: Also accept a float with a whole value, such as YAML's ``1e5`` or ``32.0``.
    :return: ``int(value)``.
    """
    whole_float = whole_floats and isinstance(value, numbers.Real) and float(value).is_integer()
    if not (is_integer(value) or (whole_float and not isinstance(value, bool))) or value < 1:
        raise ValueError(f"{name} must be a positive integer{alternative}, got {value!r}")
    return int(value)
