"""The fast-weight growth benchmark reproduces what its docstring claims, on a short run."""

import pytest

from benchmarks.fast_weights import SETTINGS, table


def test_normalisation_lets_fast_weights_grow_to_the_slow_ones_size_within_an_episode() -> None:
    lines = table(steps=50, batch=4, seed=0).splitlines()
    assert lines[0] == "| setting | step 1 | step 10 | step 50 |"
    rows = {line.split(" | ")[0].lstrip("| "): [float(v) for v in line.rstrip(" |").split(" | ")[1:]] for line in lines[2:]}
    assert list(rows) == list(SETTINGS)
    # Normalised (either norm time): F grows from ~1e-4 of W to W's size whatever gamma; lambda below the row norms stops it
    for grows in ("paper (normalize, pre)", "pre, gamma_init 1e-5 (0.01x)", "post"):
        assert rows[grows][0] < 1e-3 and rows[grows][-1] > 0.5, grows
    for stays in ("pre, lambda_max 0.5", "post, lambda_max 0.5", "no normalisation"):
        assert rows[stays][-1] < 1e-2, stays
    assert rows["pre, gamma_init 1e-5 (0.01x)"][0] == pytest.approx(rows["paper (normalize, pre)"][0] / 100, rel=0.05)
