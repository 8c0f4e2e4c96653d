"""Fixtures of the op's tests (the path fixtures ``kernel`` and ``cpp_available`` are the whole suite's: tests/conftest.py)."""

import pytest

from sb3_stpn.ops.stpn import fused_cpp, fused_torch
from tests.ops.stpn.spec import spy_on_backward


@pytest.fixture
def backward_segments(kernel: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """
    ``(every, checkpoints)`` of each backward the fused path ``kernel`` runs in the test (see ``spy_on_backward``);
    stays empty on the reference path, whose backward is autograd's.
    """
    if kernel == "reference":
        return []
    return spy_on_backward(monkeypatch, {"torch": fused_torch, "cpp": fused_cpp}[kernel])
