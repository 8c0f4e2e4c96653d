"""
The entry point of the STPN op: ``stpn_sequence`` runs the path that ``SB3_STPN_KERNEL`` names (README.md, Paths).

The fused paths (``fused_torch``, ``fused_cpp``, ``fused_triton``) run as one autograd node, ``_FusedStpn``,
with the checkpoint plan chosen here: the forward keeps F at the start of every segment of C steps, the
backward recomputes one segment at a time from its checkpoint. C is the largest segment whose recompute
buffer fits ``SEGMENT_BUDGET_BYTES`` (the buffer is per thread for ``cpp``, for the whole batch for the others),
but at least ceil(sqrt(T)), the length that minimises checkpoints plus segment. The recompute repeats the
forward's arithmetic, so it is exact. The Triton kernels are imported on first use, behind a guard that logs
once and falls back to the ``torch`` path, as a failed C++ build does.
"""

import functools
import logging
import math
import os
from types import ModuleType

import torch as th

from sb3_stpn.ops.stpn import fused_cpp, fused_torch
from sb3_stpn.ops.stpn.checks import check_inputs
from sb3_stpn.ops.stpn.config import StpnBackend, StpnConfig, StpnParams
from sb3_stpn.ops.stpn.fused_cpp import _cpp_ops
from sb3_stpn.ops.stpn.naive import stpn_sequence_reference

logger = logging.getLogger(__name__)

#: The environment variable that selects the path of stpn_sequence: one of KERNELS
KERNEL_ENV = "SB3_STPN_KERNEL"
#: The paths: auto (the default: the fastest available), reference, torch, cpp or triton
KERNELS = ("auto", "reference", "torch", "cpp", "triton")
# Bound on the buffer holding a recomputed checkpoint segment (per thread for cpp, per call for the others)
SEGMENT_BUDGET_BYTES = 32 * 2**20


def checkpoint_interval(steps: int, segment_step_bytes: int) -> int:
    """The segment length C: as long as the budget allows, at least ceil(sqrt(T)), at most T."""
    return max(math.isqrt(steps - 1) + 1, min(steps, SEGMENT_BUDGET_BYTES // max(segment_step_bytes, 1)))


@functools.cache
def _triton_ops() -> ModuleType | None:
    """The Triton kernels (imported on first use); None, logged once, when triton does not import."""
    try:
        from sb3_stpn.ops.stpn import fused_triton
    except Exception as error:  # triton missing or broken must not stop the layer
        logger.warning("sb3_stpn: the Triton STPN kernel is unavailable (%s); using the torch-op path", error)
        return None
    return fused_triton


def triton_kernel_available() -> bool:
    """Whether the Triton kernels import here (they run on CUDA tensors, or on CPU ones under TRITON_INTERPRET=1)."""
    return _triton_ops() is not None


def _backend(choice: str) -> StpnBackend:
    """The fused path ``choice`` names (``kernel_choice`` has checked that it is available)."""
    if choice == "triton":
        triton_backend = _triton_ops()
        assert triton_backend is not None, "kernel_choice checks that triton imports"
        return triton_backend
    return {"torch": fused_torch, "cpp": fused_cpp}[choice]


class _FusedStpn(th.autograd.Function):
    """The whole sequence as one autograd node: the backend's forward loop, then its hand-derived BPTT."""

    @staticmethod
    def forward(
        ctx: th.autograd.function.FunctionCtx,
        backend: StpnBackend,
        config: StpnConfig,
        record_energy: bool,
        x: th.Tensor,
        h0: th.Tensor,
        fast0: th.Tensor,
        starts: th.Tensor | None,
        *tensors: th.Tensor | None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        # The parameters come as separate arguments, so that autograd tracks each
        params = StpnParams._make(tensors)
        steps, batch = x.shape[:2]
        step_bytes = fast0[0].numel() * fast0.element_size() * (batch if backend.PER_BATCH_SEGMENT else 1)
        every = checkpoint_interval(steps, step_bytes)
        outputs, fast, energy, checkpoints = backend.forward(
            x, h0, fast0, starts, params=params, config=config, record_energy=record_energy, every=every
        )
        # None for an absent parameter (or no episode starts): save_for_backward takes it, its stub says Tensor
        ctx.save_for_backward(x, h0, starts, checkpoints, outputs, *params)  # type: ignore[arg-type]
        ctx.backend, ctx.config, ctx.every = backend, config, every  # type: ignore[attr-defined]
        if energy is not None:
            ctx.mark_non_differentiable(energy)
        return outputs, fast, energy

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(
        ctx: th.autograd.function.FunctionCtx, d_outputs: th.Tensor, d_fast: th.Tensor, _: th.Tensor | None
    ) -> tuple[th.Tensor | None, ...]:
        x, h0, starts, checkpoints, outputs, *tensors = ctx.saved_tensors  # type: ignore[attr-defined]
        grads = ctx.backend.backward(  # type: ignore[attr-defined]
            x,
            h0,
            starts,
            checkpoints,
            outputs,
            params=StpnParams(*tensors),
            config=ctx.config,  # type: ignore[attr-defined]
            every=ctx.every,  # type: ignore[attr-defined]
            d_outputs=d_outputs,
            d_fast=d_fast,
        )
        # One entry per argument of forward: none for backend, config, record_energy and starts
        return (None, None, None, grads.x, grads.h0, grads.fast0, None, *grads.params)


def _requested_kernel() -> str:
    """``SB3_STPN_KERNEL`` as asked for: unset or empty is ``auto``; spacing and case as a shell user may type them."""
    value = os.environ.get(KERNEL_ENV, "")
    choice = value.strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={value!r} is not a kernel path: use one of {', '.join(KERNELS)}, or unset it")
    return choice


def kernel_choice(x: th.Tensor) -> str:
    """The path ``stpn_sequence`` takes for ``x``: ``SB3_STPN_KERNEL``, or for ``auto`` the fastest available (where
    ``auto`` picks Triton, :func:`stpn_sequence` first checks it against the torch path: see :func:`_triton_agrees`).

    :param x: The input the path must take: its device and dtype decide.
    """
    choice = _requested_kernel()
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


# The tolerances of the float32 kernel tests (tests/ops/stpn); float64 is held to far less
SELF_CHECK_TOLERANCES = {th.float32: (1e-4, 1e-5), th.float64: (1e-9, 1e-10)}


def _triton_agrees(device: th.device, dtype: th.dtype, config: StpnConfig, params: StpnParams) -> bool:
    """
    Whether the Triton path gives the torch path's outputs, final ``F`` and gradients on a small random problem of this
    layer's configuration, on ``device``: ``auto`` runs this once per device, dtype and configuration (cached) before
    it trusts Triton there, since the Triton kernels have been tested in Triton's CPU interpreter only. On an error or a
    mismatch it logs one warning naming it, and the torch path serves that configuration from then on.
    """
    layout = (params.bias_lambda is not None, params.norm_gain is not None)
    return _triton_agrees_on(str(device), dtype, config, layout)


@functools.cache
def _triton_agrees_on(device: str, dtype: th.dtype, config: StpnConfig, layout: tuple[bool, bool]) -> bool:
    plastic_bias, norm_gain = layout
    steps, batch, inputs, hidden = 5, 3, 4, 6
    presynaptic = inputs + (hidden if config.recurrent else 0)
    generator = th.Generator()

    def random(*shape: int, low: float = -1.0, high: float = 1.0) -> th.Tensor:
        return (th.rand(shape, generator=generator, dtype=dtype) * (high - low) + low).to(device)

    def problem() -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor, StpnParams]:
        """The same random problem at every call: inputs, state, episode starts and parameters."""
        generator.manual_seed(0)
        x, h0 = random(steps, batch, inputs), random(batch, hidden)
        fast0 = random(batch, hidden, presynaptic + int(plastic_bias), low=-0.1, high=0.1)
        starts = (random(steps, batch, low=0.0) < 0.2).to(dtype)
        params = StpnParams(
            random(hidden, presynaptic), random(hidden), random(hidden, presynaptic, low=0.0),
            random(hidden, presynaptic, low=-0.1, high=0.1),
            random(hidden, low=0.0) if plastic_bias else None, random(hidden, low=-0.1, high=0.1) if plastic_bias else None,
            random(hidden, low=0.5, high=1.5) if norm_gain else None,
        )  # fmt: skip
        return x, h0, fast0, starts, params

    results: dict[str, list[th.Tensor | None]] = {}
    try:
        for choice in ("torch", "triton"):
            x, h0, fast0, starts, params = problem()
            leaves = [x, h0, fast0, *(p for p in params if p is not None)]
            for leaf in leaves:
                leaf.requires_grad_()
            outputs, _, fast, _ = _run_sequence(choice, x, h0, fast0, starts, params, config, False)
            (outputs.square().sum() + fast.sum()).backward()
            results[choice] = [outputs.detach(), fast.detach(), *(leaf.grad for leaf in leaves)]
        rtol, atol = SELF_CHECK_TOLERANCES.get(dtype, (1e-2, 1e-3))
        names = [
            "outputs",
            "final F",
            "dx",
            "dh0",
            "dF0",
            *(f"d{name}" for name, p in params._asdict().items() if p is not None),
        ]
        for name, triton, torch in zip(names, results["triton"], results["torch"], strict=True):
            th.testing.assert_close(triton, torch, rtol=rtol, atol=atol, msg=functools.partial("{}: {}".format, name))
    except Exception as error:  # a failed compile, a launch error, a mismatch: none may reach the user's training
        problem_text = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        logger.warning(
            "sb3_stpn: the Triton STPN kernel failed its check against the torch path on %s (%s); using the torch path "
            "for %s from now on (SB3_STPN_KERNEL=triton forces Triton)",
            device, problem_text, config,
        )  # fmt: skip
        return False
    return True


def _broadcast(plasticity: th.Tensor, like: th.Tensor) -> th.Tensor:
    return plasticity if plasticity.shape == like.shape else plasticity.expand_as(like)


def stpn_sequence(
    x: th.Tensor,
    state: tuple[th.Tensor, th.Tensor],
    *,
    params: StpnParams,
    config: StpnConfig,
    episode_starts: th.Tensor | None = None,
    record_energy: bool = False,
) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
    """
    Run the STPN over ``x`` (T, B, I) from ``state = (h0, F_0)`` on the path chosen by :func:`kernel_choice`.

    ``episode_starts`` (T, B) zeroes the state of a row before the step it marks. Same results and gradients
    as :func:`~sb3_stpn.ops.stpn.naive.stpn_sequence_reference`. A bad input raises a ``ValueError``
    (:func:`~sb3_stpn.ops.stpn.checks.check_inputs`), an inf or NaN in F a ``DivergedStateError``.

    :param x: Inputs (T, B, I).
    :param state: ``(h0, F_0)``, as :func:`~sb3_stpn.ops.stpn.naive.stpn_sequence_reference` takes it.
    :param params: The layer's learned tensors (scalar decays and rates are broadcast here, for every fused path).
    :param config: The recurrence's options (``lambda_max``, and ``retention_max`` where it is a fixed bound, are
        applied here, so that every path bounds alike).
    :param episode_starts: (T, B) of 0/1, or None.
    :param record_energy: Whether to return the energy (T, B) too.
    :return: outputs (T, B, H), final ``h``, final ``F`` and, if asked, energy (T, B).
    """
    weight_bound, bias_bound = config.decay_bounds()
    # In the forward, so that the gradient sees the bound (zero above it), on every path alike
    if weight_bound is not None:
        params = params._replace(weight_lambda=params.weight_lambda.clamp(max=weight_bound))
    if bias_bound is not None and params.bias_lambda is not None:
        params = params._replace(bias_lambda=params.bias_lambda.clamp(max=bias_bound))
    h0, fast0 = state
    try:
        choice = kernel_choice(x)
        if choice == "triton" and _requested_kernel() == "auto" and not _triton_agrees(x.device, x.dtype, config, params):
            choice = "torch"
        return _run_sequence(choice, x, h0, fast0, episode_starts, params, config, record_energy)
    except Exception:
        # Whatever failed first (the kernel's own checks, a broadcast, the checkpoint plan of an empty
        # batch), a bad input is named as such; else the error stands
        check_inputs(x, h0, fast0, episode_starts, params, config)
        raise


def _run_sequence(
    choice: str,
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    params: StpnParams,
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
        check_inputs(x, h0, fast0, episode_starts, params, config)
    if choice == "reference":
        return stpn_sequence_reference(
            x, (h0, fast0), params=params, config=config, episode_starts=episode_starts, record_energy=record_energy
        )
    # Scalar plasticity is broadcast here, so that autograd sums its gradient. Rollouts call this once
    # per env step with T=1, so per-call Python work counts: full-size tensors are passed as they are.
    weight, bias = params.weight, params.bias
    params = params._replace(
        weight_lambda=_broadcast(params.weight_lambda, weight),
        weight_gamma=_broadcast(params.weight_gamma, weight),
        bias_lambda=None if params.bias_lambda is None else _broadcast(params.bias_lambda, bias),
        bias_gamma=None if params.bias_gamma is None else _broadcast(params.bias_gamma, bias),
    )
    starts = None if episode_starts is None else episode_starts.to(x.dtype)
    backend = _backend(choice)
    if th.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, fast0, *params)):
        outputs, fast, energy = _FusedStpn.apply(backend, config, record_energy, x, h0, fast0, starts, *params)
    else:
        # Inference (rollouts): no checkpoints to keep
        outputs, fast, energy, _ = backend.forward(
            x, h0, fast0, starts, params=params, config=config, record_energy=record_energy, every=0
        )
    return outputs, outputs[-1], fast, energy
