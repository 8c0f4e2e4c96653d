"""The op's options: a configuration no path implements is refused where it is made."""

import pytest

from sb3_stpn.ops.stpn import StpnConfig

REFUSED = {
    "rule=bcm": ({"rule": "bcm"}, r"Unknown plasticity rule 'bcm': use 'hebbian' or 'oja'"),
    "norm_time=during": ({"norm_time": "during"}, r"Unknown norm_time 'during': use 'pre' or 'post'"),
    "clamp=0": ({"clamp": 0.0}, r"clamp must be positive or None, got 0.0"),
    "lambda_max=-1": ({"lambda_max": -1.0}, r"lambda_max must be positive or None, got -1.0"),
}


@pytest.mark.parametrize(("options", "message"), list(REFUSED.values()), ids=list(REFUSED))
def test_an_option_no_path_implements_is_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StpnConfig(**options)
