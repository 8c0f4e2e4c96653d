"""
The contract every path of the STPN op shares: its options, its parameters, the backend interface, the norm
epsilon and the divergence error. The recurrence itself is stated in this folder's ``README.md``.
"""

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch as th

#: Added to the row norms so that an all-zero row does not divide by zero (README.md)
NORM_EPS = 1e-16


@dataclass(frozen=True)
class StpnConfig:
    """
    The options of the recurrence that are not learned parameters (:class:`~sb3_stpn.common.stpn.STPN`'s, which
    says more of each).

    :param recurrent: STPNr: the previous output is presynaptic input too; False: the feed-forward STPNf.
    :param normalize: Divide each neuron's efficacies by their L2 norm.
    :param clamp: If set, ``F`` is clamped to ``[-clamp, clamp]`` after every update.
    :param rule: ``"hebbian"`` or ``"oja"``.
    :param norm_time: ``"pre"``: divide ``F_{t-1}`` by ``n_t`` before the Hebbian term; ``"post"``: divide the
        new ``F`` by its own norm.
    :param lambda_max: If set, ``weight_lambda`` and ``bias_lambda`` are clamped to at most this in the forward
        (None: the paper's model).
    :param retention_max: If set, in (0, 1]: the most of ``F_{t-1}`` that ``F_t`` keeps. With normalisation
        before the update the decays act at most ``retention_max * n_t`` (a bound tied to the norm: the kernels
        apply it, see :attr:`relative_lambda_max`); otherwise, and for a plastic bias, it bounds the decays as
        ``lambda_max`` does (None: the paper's model).
    """

    recurrent: bool = True
    normalize: bool = True
    clamp: float | None = None
    rule: str = "hebbian"
    norm_time: str = "pre"
    lambda_max: float | None = None
    retention_max: float | None = None

    def __post_init__(self) -> None:
        """Refuse options no path implements, once, where they are given (a layer builds its config once)."""
        if self.rule not in ("hebbian", "oja"):
            raise ValueError(f"Unknown plasticity rule {self.rule!r}: use 'hebbian' or 'oja'")
        if self.norm_time not in ("pre", "post"):
            raise ValueError(f"Unknown norm_time {self.norm_time!r}: use 'pre' or 'post'")
        if self.clamp is not None and self.clamp <= 0:
            raise ValueError(f"clamp must be positive or None, got {self.clamp}")
        if self.lambda_max is not None and self.lambda_max <= 0:
            raise ValueError(f"lambda_max must be positive or None, got {self.lambda_max}")
        if self.retention_max is not None and not 0 < self.retention_max <= 1:
            raise ValueError(f"retention_max must lie in (0, 1] or be None, got {self.retention_max}")

    @property
    def relative_lambda_max(self) -> float | None:
        """``retention_max`` where it bounds the decays relative to the norm (``lambda <= retention_max * n_t``,
        normalisation before the update), which every path applies per step; None elsewhere."""
        return self.retention_max if self.normalize and self.norm_time == "pre" else None

    def decay_bounds(self) -> tuple[float | None, float | None]:
        """The fixed bounds ``(weight_lambda, bias_lambda)`` are clamped to before any path runs: ``lambda_max``, and
        ``retention_max`` wherever it is not relative (a plastic bias's column is never normalised)."""
        absolute = None if self.relative_lambda_max is not None else self.retention_max
        bounds = [b for b in (self.lambda_max, absolute) if b is not None]
        bias_bounds = [b for b in (self.lambda_max, self.retention_max) if b is not None]
        return (min(bounds) if bounds else None, min(bias_bounds) if bias_bounds else None)


class DivergedStateError(ValueError):
    """The fast weights F (or the input) became inf or NaN: the outputs would be garbage from then on."""


#: The advice of every :class:`DivergedStateError`: what makes ``F`` diverge and how to bound it
DIVERGENCE_ADVICE = (
    "the fast weights F became inf or NaN (a decay weight_lambda or bias_lambda above 1 makes F grow without "
    "bound, most of all with normalize=False, a plastic bias or Oja's rule; or the input holds inf/NaN): bound F "
    "with clamp=c, or the decays with lambda_max=1.0 or retention_max=0.95 (F then keeps at most 95 % of itself per "
    "step)"
)


def raise_if_diverged(finite: th.Tensor | bool) -> None:
    """Raise :class:`DivergedStateError` unless the kernel's flag ``finite`` (a bool, or a bool scalar tensor) is set."""
    if not finite:
        raise DivergedStateError(f"STPN: {DIVERGENCE_ADVICE}")


class StpnParams(NamedTuple):
    """
    The learned tensors of one layer, as every path takes them (README.md, Parameters); ``None`` where the layer
    has none. The field order is the C++ kernel's argument order, so that ``*params`` passes them there.

    :param weight: The slow weights ``W`` (H, K).
    :param bias: The bias (H,).
    :param weight_lambda: The decays of ``F`` (H, K), or one scalar for the layer.
    :param weight_gamma: The plasticity rates (H, K), or one scalar for the layer.
    :param bias_lambda: The decays of a plastic bias (H,) or scalar, carried as the last column of ``F``.
    :param bias_gamma: The plasticity rates of a plastic bias (H,) or scalar.
    :param norm_gain: A learned gain of the norm (H,).
    """

    weight: th.Tensor
    bias: th.Tensor
    weight_lambda: th.Tensor
    weight_gamma: th.Tensor
    bias_lambda: th.Tensor | None = None
    bias_gamma: th.Tensor | None = None
    norm_gain: th.Tensor | None = None


class StpnGradients(NamedTuple):
    """A backward's result: the gradients of ``x``, ``h0`` and ``F_0``, and of each parameter (``None`` where absent)."""

    x: th.Tensor
    h0: th.Tensor
    fast0: th.Tensor
    params: StpnParams


class StpnBackend(Protocol):
    """
    A fused path (the modules ``fused_torch``, ``fused_cpp`` and ``fused_triton``): the sequence without a graph,
    keeping F at the start of every segment of ``every`` steps (none if 0), and its BPTT from those checkpoints.
    """

    # Whether the recompute buffer holds a segment of the whole batch (True) or of one sample per thread (False)
    PER_BATCH_SEGMENT: bool

    def forward(
        self,
        x: th.Tensor,
        h0: th.Tensor,
        fast0: th.Tensor,
        starts: th.Tensor | None,
        params: StpnParams,
        config: StpnConfig,
        record_energy: bool,
        every: int,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
        """Outputs (T, B, H), ``F_T``, energy (T, B) if asked, and the checkpoints (segments, B, H, Kp)."""
        ...

    def backward(
        self,
        x: th.Tensor,
        h0: th.Tensor,
        starts: th.Tensor | None,
        checkpoints: th.Tensor,
        outputs: th.Tensor,
        params: StpnParams,
        config: StpnConfig,
        every: int,
        d_outputs: th.Tensor,
        d_fast: th.Tensor,
    ) -> StpnGradients:
        """The gradients, given those of the outputs and of ``F_T``."""
        ...
