"""The STPN recurrence over a sequence: a fused autograd Function and the per-step reference loop.

``stpn_sequence`` is the single entry point the layer uses. It runs one of four paths, chosen by the
environment variable ``SB3_STPN_KERNEL``:

- ``reference``: ``stpn_sequence_reference``, one ``stpn_step`` of plain differentiable ops per time
  step, recorded by autograd. The straightforward implementation of ``shared/STPN.md``; the fallback
  and the oracle every other path is tested against.
- ``torch``: ``_FusedStpn`` with torch ops: the forward runs the loop without recording a graph, the
  backward is hand-derived BPTT (``_torch_step_backward``), one batched step at a time. Any device.
- ``cpp``: ``_FusedStpn`` with the C++ kernel ``csrc/stpn.cpp`` (compiled at first use with
  ``torch.utils.cpp_extension.load``): per sample (OpenMP over the batch) the whole time loop in fused
  passes over F, forward and backward. Training calls work on F transposed to (K, H) inside the
  kernel, so that per-neuron sums are vector accumulators; inference (rollout steps) on the public
  (H, K) rows, which needs no transpose at the boundary. CPU, float32/float64.
- ``triton``: ``_FusedStpn`` with the Triton kernels of ``stpn_triton`` (the same plan as ``cpp``, one
  program per sample on the GPU). CUDA tensors, float32/float64; CPU tensors under Triton's interpreter
  (``TRITON_INTERPRET=1``, for the tests).
- ``auto`` (default): ``cpp`` for CPU tensors when it builds, ``triton`` for CUDA tensors when triton
  imports, else ``torch``. A failed build or import is logged once per process and the ``torch`` path
  taken.

Memory of the fused paths (checkpointing instead of keeping T copies of F). With S = H * (K + plastic
bias) elements per sample, the forward keeps the outputs (T, B, H), which backward needs anyway, and
F at the start of every segment of C steps: B * ceil(T / C) * S. Backward recomputes one segment at a
time from its checkpoint and walks it in reverse: C * S per thread for ``cpp`` (a sample's segment),
B * C * S for ``torch`` (the batch's segment). C is the largest segment whose recompute buffer fits
``SEGMENT_BUDGET_BYTES``, but at least ceil(sqrt(T)), the length that minimises checkpoints plus
segment: e.g. B=256, T=32, H=64, K=68 in float32 keeps only F_0 for ``cpp`` (C = T, 0.55 MB per
thread). The recompute costs one extra forward pass and is exact: it repeats the forward's arithmetic.
"""

import functools
import logging
import math
import os
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch as th

from sb3_stpn.ops.stpn.checks import check_inputs
from sb3_stpn.ops.stpn.config import StpnConfig, raise_if_diverged
from sb3_stpn.ops.stpn.fused_cpp import _cpp_backward, _cpp_forward, _cpp_ops
from sb3_stpn.ops.stpn.fused_torch import _torch_backward, _torch_forward
from sb3_stpn.ops.stpn.naive import stpn_sequence_reference

logger = logging.getLogger(__name__)

# Selects the path of stpn_sequence: auto (default), reference, torch, cpp or triton
KERNEL_ENV = "SB3_STPN_KERNEL"
KERNELS = ("auto", "reference", "torch", "cpp", "triton")
# Bound on the buffer holding a recomputed checkpoint segment (per thread for cpp, per call for torch)
SEGMENT_BUDGET_BYTES = 32 * 2**20


class _Backend(NamedTuple):
    """How a fused path runs the sequence (``forward``) and its BPTT (``backward``)."""

    forward: Callable[..., tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]]
    backward: Callable[..., tuple[th.Tensor | None, ...]]
    # Bytes of the recomputed segment buffer per step of F of one sample (cpp) or of the batch (torch)
    per_batch_segment: bool


def checkpoint_interval(steps: int, segment_step_bytes: int) -> int:
    """The segment length C: as long as the budget allows, at least ceil(sqrt(T)), at most T."""
    return max(math.isqrt(steps - 1) + 1, min(steps, SEGMENT_BUDGET_BYTES // max(segment_step_bytes, 1)))


@functools.cache
def _triton_ops() -> ModuleType | None:
    """The Triton kernels (imported on first use); None, logged once, when triton does not import."""
    try:
        from sb3_stpn.ops.stpn import fused_triton as stpn_triton
    except Exception as error:  # triton missing or broken must not stop the layer
        logger.warning("sb3_stpn: the Triton STPN kernel is unavailable (%s); using the torch-op path", error)
        return None
    return stpn_triton


def triton_kernel_available() -> bool:
    """Whether the Triton kernels import here (they run on CUDA tensors, or on CPU ones under TRITON_INTERPRET=1)."""
    return _triton_ops() is not None


def _triton_forward(*args: object) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
    outputs, fast, energy, checkpoints = _triton_ops().forward(*args)
    # The Triton kernels have no divergence flag yet (the C++ one has): F_T is checked once per call
    raise_if_diverged(th.isfinite(fast).all())
    return outputs, fast, energy, checkpoints


def _triton_backward(*args: object) -> tuple[th.Tensor | None, ...]:
    return _triton_ops().backward(*args)


BACKENDS = {
    "torch": _Backend(_torch_forward, _torch_backward, per_batch_segment=True),
    "cpp": _Backend(_cpp_forward, _cpp_backward, per_batch_segment=False),
    # Every sample's segment is recomputed at once on the GPU
    "triton": _Backend(_triton_forward, _triton_backward, per_batch_segment=True),
}


class _FusedStpn(th.autograd.Function):
    """The whole sequence as one autograd node: the backend's forward loop, then its hand-derived BPTT."""

    @staticmethod
    def forward(
        ctx: th.autograd.function.FunctionCtx,
        backend: _Backend,
        config: StpnConfig,
        record_energy: bool,
        x: th.Tensor,
        h0: th.Tensor,
        fast0: th.Tensor,
        starts: th.Tensor | None,
        *params: th.Tensor | None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        steps, batch = x.shape[:2]
        step_bytes = fast0[0].numel() * fast0.element_size() * (batch if backend.per_batch_segment else 1)
        every = checkpoint_interval(steps, step_bytes)
        outputs, fast, energy, checkpoints = backend.forward(x, h0, fast0, starts, params, config, record_energy, every)
        ctx.save_for_backward(x, h0, starts, checkpoints, outputs, *params)
        ctx.backend, ctx.config, ctx.every = backend, config, every
        if energy is not None:
            ctx.mark_non_differentiable(energy)
        return outputs, fast, energy

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(
        ctx: th.autograd.function.FunctionCtx, d_outputs: th.Tensor, d_fast: th.Tensor, _: th.Tensor | None
    ) -> tuple[th.Tensor | None, ...]:
        x, h0, starts, checkpoints, outputs, *params = ctx.saved_tensors
        grads = ctx.backend.backward(
            x, h0, starts, checkpoints, outputs, tuple(params), ctx.config, ctx.every, d_outputs, d_fast
        )
        return (None, None, None, *grads[:3], None, *grads[3:])


def kernel_choice(x: th.Tensor) -> str:
    """The path ``stpn_sequence`` takes for ``x``: ``SB3_STPN_KERNEL``, or for ``auto`` the fastest available."""
    choice = os.environ.get(KERNEL_ENV, "auto").lower()
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={choice!r}: use one of {', '.join(KERNELS)}")
    cpp_fits = x.device.type == "cpu" and x.dtype in (th.float32, th.float64)
    triton_fits = x.dtype in (th.float32, th.float64) and (
        x.device.type == "cuda" or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
    )
    if choice == "triton":
        if not triton_fits:
            raise ValueError(
                f"{KERNEL_ENV}=triton needs float32/float64 CUDA tensors (CPU ones only under TRITON_INTERPRET=1), "
                f"got {x.dtype} on {x.device}"
            )
        if _triton_ops() is None:
            raise RuntimeError(f"{KERNEL_ENV}=triton but triton does not import (see the log): pip install triton")
    if choice == "cpp":
        if not cpp_fits:
            raise ValueError(f"{KERNEL_ENV}=cpp needs float32/float64 CPU tensors, got {x.dtype} on {x.device}")
        if _cpp_ops() is None:
            raise RuntimeError(f"{KERNEL_ENV}=cpp but the C++ kernel could not be built (see the log)")
    if choice == "auto":
        if x.device.type == "cuda" and triton_fits and _triton_ops() is not None:
            return "triton"
        return "cpp" if cpp_fits and _cpp_ops() is not None else "torch"
    return choice


def _broadcast(plasticity: th.Tensor, like: th.Tensor) -> th.Tensor:
    return plasticity if plasticity.shape == like.shape else plasticity.expand_as(like)


def stpn_sequence(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    weight: th.Tensor,
    bias: th.Tensor,
    weight_lambda: th.Tensor,
    weight_gamma: th.Tensor,
    bias_plasticity: tuple[th.Tensor, th.Tensor] | None,
    config: StpnConfig,
    record_energy: bool = False,
    norm_gain: th.Tensor | None = None,
) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
    """
    Run the STPN over ``x`` (T, B, I) from state ``(h0, fast0)`` on the path chosen by :func:`kernel_choice`.

    ``episode_starts`` (T, B) zeroes the state of a row before the step it marks; ``norm_gain`` (H,) scales
    the row norms (None: no gain). Same results and gradients as :func:`stpn_sequence_reference`. A bad
    input raises a ``ValueError`` (:func:`check_inputs`), an inf or NaN in F a :class:`DivergedStateError`.

    :return: outputs (T, B, H), final ``h``, final ``F`` and, if asked, energy (T, B).
    """
    bias_lambda, bias_gamma = (None, None) if bias_plasticity is None else bias_plasticity
    if config.lambda_max is not None:
        # In the forward, so that the gradient sees the bound (zero above it), on every path alike
        weight_lambda = weight_lambda.clamp(max=config.lambda_max)
        if bias_lambda is not None:
            bias_lambda = bias_lambda.clamp(max=config.lambda_max)
    parameters = (bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain)
    try:
        return _run_sequence(kernel_choice(x), x, h0, fast0, episode_starts, weight, parameters, config, record_energy)
    except Exception:
        # Whatever failed first (the kernel's own checks, a broadcast, the checkpoint plan of an empty
        # batch), a bad input is named as such; else the error stands
        check_inputs(x, h0, fast0, episode_starts, weight, parameters, config)
        raise


def _run_sequence(
    choice: str,
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    weight: th.Tensor,
    parameters: tuple[th.Tensor | None, ...],
    config: StpnConfig,
    record_energy: bool,
) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
    """
    :func:`stpn_sequence` on the path ``choice``, after the input checks.

    The C++ entry points check every input before touching memory: on that path the Python checks run
    only when the kernel rejects a call (to name the problem in a ValueError), so that rollouts, one
    call per env step, do not pay for the checks twice.
    """
    if choice != "cpp":
        check_inputs(x, h0, fast0, episode_starts, weight, parameters, config)
    bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = parameters
    if choice == "reference":
        bias_plasticity = None if bias_lambda is None else (bias_lambda, bias_gamma)
        return stpn_sequence_reference(
            x,
            h0,
            fast0,
            episode_starts,
            weight,
            bias,
            weight_lambda,
            weight_gamma,
            bias_plasticity,
            config,
            record_energy,
            norm_gain,
        )
    # Scalar plasticity is broadcast here, so that autograd sums its gradient. Rollouts call this once
    # per env step with T=1, so per-call Python work counts: full-size tensors are passed as they are.
    params = (
        weight,
        bias,
        _broadcast(weight_lambda, weight),
        _broadcast(weight_gamma, weight),
        None if bias_lambda is None else _broadcast(bias_lambda, bias),
        None if bias_gamma is None else _broadcast(bias_gamma, bias),
        norm_gain,
    )
    starts = None if episode_starts is None else episode_starts.to(x.dtype)
    backend = BACKENDS[choice]
    tensors = (x, h0, fast0, *params)
    if th.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        outputs, fast, energy = _FusedStpn.apply(backend, config, record_energy, x, h0, fast0, starts, *params)
    else:
        # Inference (rollouts): no checkpoints to keep
        outputs, fast, energy, _ = backend.forward(x, h0, fast0, starts, params, config, record_energy, 0)
    return outputs, outputs[-1], fast, energy
