"""Fixtures shared by the STPN layer's and op's tests: which path of ``stpn_sequence`` runs."""

import pytest
import torch as th

from sb3_stpn.ops.stpn import KERNEL_ENV, cpp_kernel_available, dispatch

# The test models are tiny: one thread avoids oversubscribing the small CI machine
th.set_num_threads(1)


@pytest.fixture(scope="module")
def cpp_available() -> bool:
    return cpp_kernel_available()


@pytest.fixture(params=["reference", "torch", "cpp"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, cpp_available: bool) -> str:
    """Forces a path, with segments short enough that the fused paths recompute several checkpoints."""
    if request.param == "cpp" and not cpp_available:
        pytest.skip("the C++ kernel could not be built here (no compiler?)")
    monkeypatch.setenv(KERNEL_ENV, request.param)
    monkeypatch.setattr(dispatch, "SEGMENT_BUDGET_BYTES", 1)
    return request.param
