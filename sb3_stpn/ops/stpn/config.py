"""The contract every path of the STPN op shares: its options, the norm epsilon and the divergence error."""

from dataclasses import dataclass

import torch as th

# Added to the row norms so that an all-zero row does not divide by zero (shared/STPN.md)
NORM_EPS = 1e-16


@dataclass(frozen=True)
class StpnConfig:
    """The options of the recurrence that are not learned parameters."""

    recurrent: bool = True
    normalize: bool = True
    clamp: float | None = None
    rule: str = "hebbian"
    # "pre": divide F_{t-1} by n_t before the Hebbian term; "post": divide the new F by its own norm
    norm_time: str = "pre"
    # If set, weight_lambda and bias_lambda are clamped to at most this in the forward (None: the paper's model)
    lambda_max: float | None = None


class DivergedStateError(ValueError):
    """The fast weights F (or the input) became inf or NaN: the outputs would be garbage from then on."""


DIVERGENCE_ADVICE = (
    "the fast weights F became inf or NaN (a decay weight_lambda or bias_lambda above 1 makes F grow without "
    "bound, most of all with normalize=False, a plastic bias or Oja's rule; or the input holds inf/NaN): bound F "
    "with clamp=c, or the decays with lambda_max=1.0"
)


def raise_if_diverged(finite: th.Tensor | bool) -> None:
    """Raise :class:`DivergedStateError` unless the kernel's flag ``finite`` (a bool, or a bool scalar tensor) is set."""
    if not finite:
        raise DivergedStateError(f"STPN: {DIVERGENCE_ADVICE}")
