"""The shared checks of user-given values."""

import re

import numpy as np
import pytest

from sb3_stpn.common.utils import check_positive_int, is_integer


@pytest.mark.parametrize("value", [1, 7, np.int32(3), np.int64(10**12)])
def test_a_positive_integer_is_returned_as_an_int(value: object) -> None:
    checked = check_positive_int(value, "n_steps")
    assert type(checked) is int and checked == value


@pytest.mark.parametrize("value", [0, -5, 2.0, 2.5, "8", True, np.bool_(True), None, float("nan")])
def test_anything_else_is_a_value_error_naming_it(value: object) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(f'n_steps must be a positive integer, got {value!r}')}$"):
        check_positive_int(value, "n_steps")


def test_the_message_says_what_else_the_caller_accepts() -> None:
    with pytest.raises(ValueError, match=r"^sequence_length must be a positive integer \(or None\), got 0$"):
        check_positive_int(0, "sequence_length", " (or None)")


@pytest.mark.parametrize(("value", "expected"), [(1e5, 100_000), (32.0, 32), (np.float64(4.0), 4), (5, 5)])
def test_whole_floats_are_accepted_where_asked(value: object, expected: int) -> None:
    checked = check_positive_int(value, "n_timesteps", whole_floats=True)
    assert type(checked) is int and checked == expected


@pytest.mark.parametrize("value", [2.5, 0.0, -3.0, float("inf"), float("nan"), True, "8"])
def test_whole_floats_still_refuse_what_is_no_positive_whole_number(value: object) -> None:
    with pytest.raises(ValueError, match="n_timesteps must be a positive integer"):
        check_positive_int(value, "n_timesteps", whole_floats=True)


def test_is_integer_takes_numpy_integers_and_refuses_bools_and_floats() -> None:
    assert is_integer(3) and is_integer(np.uint8(3)) and is_integer(-1)
    assert not (is_integer(True) or is_integer(3.0) or is_integer("3") or is_integer(np.bool_(False)))
