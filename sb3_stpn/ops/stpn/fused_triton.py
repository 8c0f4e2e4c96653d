"""
The ``triton`` path of ``stpn_sequence``: the STPN sequence as two fused Triton kernels, forward and BPTT.

Same contract and memory plan as the ``cpp`` path (``config.StpnBackend``): the forward keeps the
outputs and F at the start of every segment of C steps; the backward recomputes one segment at a time
from its checkpoint and walks it in reverse with the hand-derived gradient of ``naive.stpn_step``.
Imported lazily by ``dispatch`` (which falls back to the ``torch`` path when triton does not import).
Every variant of the layer; ``norm_time="post"`` (the new F divided by its own norm) costs one more
pass over F per step, forward and backward.

One program per sample runs the whole time loop of a call: the recurrence couples a sample's neurons
at every step, and its samples are independent. A step is two passes over the sample's F in tiles of
(all H neurons) x (BLOCK_K presynaptic columns), so that the per-neuron sums (norm, drive) accumulate
over the K chunks and Oja's trace, a sum over neurons, is local to a tile. F is read from and written
to global memory: at the maze and CartPole sizes (H=55-64, K=60-130, 15-35 kB a sample) it stays in
L1/L2 between steps; at the Atari sizes (H=64-128, K=576-2720, 130 kB-1.4 MB) it streams. W, lambda and
gamma are shared by every program and stay in L2. Threads of a program exchange h, dh and dz through
global memory between passes, behind a barrier.

Bytes per sample and step, in elements times the element size: S = H * Kp of F (Kp = K, +1 with a
plastic bias) and P = H * K of each of W, lambda, gamma, which every program reads (from L2 once the
first program has):

- Forward: F read once and written once, ``2 S``, and ``3 P`` (the update pass also gives the next
  step's norms and drives); the first step of a call reads F and W once more (``S + P``), and training
  writes a checkpoint every C steps (``S / C``). A rollout step (T=1, no grad): ``3 S + 4 P``.
- Backward: the recompute (``_recompute_segment``) reads F and writes it to the segment buffer
  (``2 S + 3 P``); then per step (``_step_backward``) pass 1 (``_update_backward``) reads F, reads and
  writes dF and this sample's lambda and gamma gradients (``7 S + 2 P``); pass 2 (``_efficacy_backward``)
  reads F, reads and writes dF and the W gradient (``5 S + P``): ``14 S + 6 P``.
- Training, forward + backward: ``16 S + 9 P``, about 25 H K (the ``cpp`` kernel: 22 H K, see
  ``benchmarks/layer.py``). The per-sample parameter gradients (3 P a sample) are summed over the batch
  once per call, after the kernel.
- ``norm_time="post"`` adds a pass that divides the new F by its norm (F read and written, ``2 S``,
  forward and in the recompute) and, backward, a pass for that norm's gradient (``_post_norm_backward``:
  F and dF read) and the W gradient's read and write in pass 1: ``8 S`` more per training step.

Extra memory on the device: the segment buffer B * (C - 1) * S and per-sample gradients 3 * B * H * K,
so the segment length C is budgeted for the whole batch (``PER_BATCH_SEGMENT``), as for ``torch``.
Small batches use few of a GPU's multiprocessors (one program a sample): B=8 at the Atari sizes leaves
most of an H100 idle, the price of a kernel without grid-wide synchronisation.
"""

import contextlib
import math

import torch as th
import triton
import triton.language as tl

from sb3_stpn.ops.stpn.config import NORM_EPS, StpnConfig, StpnGradients, StpnParams, raise_if_diverged

# Elements of one (neurons x columns) tile: bounds BLOCK_K, so that a tile's operands fit in registers
# (register counts and spills as compiled: docs/performance.md). Not tuned on a GPU.
TILE_ELEMENTS = 1024
# One program recomputes every sample's segment at once: the buffer holds the batch's (StpnBackend)
PER_BATCH_SEGMENT = True
# Kernels read module globals only as constexpr
_NORM_EPS = tl.constexpr(NORM_EPS)
# Size arguments stay runtime values (Triton would compile a kernel of its own for a size of 1, e.g. T=1)
_SIZES = ["T", "B", "IN", "H", "K", "every", "segments"]


@triton.jit
def _tile(k0, rows, H, K, Kp, BLOCK_K: tl.constexpr):
    """
    The tile of every pass over F: all neurons ``rows`` x the BLOCK_K presynaptic columns from ``k0``. Its columns,
    the mask of its elements inside (H, K), and their offsets in a sample's F (rows of Kp) and in an (H, K) parameter.
    """
    cols = k0 + tl.arange(0, BLOCK_K)
    inside = (rows[:, None] < H) & (cols[None, :] < K)
    return cols, inside, rows[:, None] * Kp + cols[None, :], rows[:, None] * K + cols[None, :]


@triton.jit
def _clamp(value, clamp, CLAMP: tl.constexpr):
    """``value`` bounded to [-clamp, clamp] with CLAMP, else as it is."""
    if CLAMP:
        value = tl.minimum(tl.maximum(value, -clamp), clamp)
    return value


@triton.jit
def _clamp_backward(d_value, value, clamp, CLAMP: tl.constexpr):
    """The gradient ``d_value`` of ``_clamp(value)`` carried back to ``value``: zero where the clamp bound it."""
    if CLAMP:
        d_value = tl.where(tl.abs(value) <= clamp, d_value, 0.0)
    return d_value


@triton.jit
def _option(value_ptr, ON: tl.constexpr):
    """A float option (clamp, rho) loaded from its one-element tensor with ON; 0 without, the tensor never read."""
    value = 0.0
    if ON:
        value = tl.load(value_ptr)
    return value


@triton.jit
def _retained(lam, decay_factor, retention):
    """
    With retention_max relative to the norm (RETAIN): the decays as they act, min(lambda / n, rho), and where they
    are lambda / n (free). Elsewhere F keeps exactly rho of itself, and neither lambda nor n gets a gradient through
    the decay. A NaN stays NaN, as on the other paths, so that the divergence check sees it.
    """
    ratio = lam * decay_factor[:, None]
    return tl.minimum(ratio, retention, propagate_nan=tl.PropagateNan.ALL), ratio < retention


@triton.jit
def _accumulate(gradient, offsets, value, inside):
    """Adds a tile ``value`` to a per-sample gradient in global memory (read, add, write)."""
    tl.store(gradient + offsets, tl.load(gradient + offsets, mask=inside, other=0.0) + value, mask=inside)


@triton.jit
def _inputs(x, h0, outputs, t, b, B, T, IN, H, K, keep, cols, RECURRENT: tl.constexpr):
    """
    Columns ``cols`` of z_t = (x_t, keep * h_{t-1}) of sample b, zero past K. For t = T (the last step's
    fused sums of a next step, never used) those of step T - 1, so that every read stays in bounds.
    """
    step = tl.minimum(t, T - 1)
    z = tl.load(x + (step * B + b) * IN + cols, mask=cols < IN, other=0.0)
    if RECURRENT:
        previous = tl.where(step > 0, outputs + ((step - 1) * B + b) * H, h0 + b * H)
        z += keep * tl.load(previous + cols - IN, mask=(cols >= IN) & (cols < K), other=0.0)
    return z


@triton.jit
def _sums(
    src, weight, x, h0, outputs, t, b, B, T, IN, H, K, Kp, keep, scale,
    RECURRENT: tl.constexpr, ENERGY: tl.constexpr, RESCALE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    Per neuron, over the rows of G = W + keep * F (src): ||G||^2, G z_t and (if ENERGY) sum |G| z_t^2.
    With RESCALE, F's rows (not a plastic bias) are first multiplied by ``scale`` in place.
    """
    rows = tl.arange(0, BLOCK_H)
    squares = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    drive = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    energy = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        cols, inside, state, param = _tile(k0, rows, H, K, Kp, BLOCK_K)
        f = tl.load(src + state, mask=inside, other=0.0)
        if RESCALE:
            f *= scale[:, None]
            tl.store(src + state, f, mask=inside)
        g = tl.load(weight + param, mask=inside, other=0.0) + keep * f
        z = _inputs(x, h0, outputs, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
        squares += tl.sum(g * g, axis=1)
        drive += tl.sum(g * z[None, :], axis=1)
        if ENERGY:
            energy += tl.sum(tl.abs(g) * (z * z)[None, :], axis=1)
    return squares, drive, energy


@triton.jit
def _inverse_norm(squares, gain, NORMALIZE: tl.constexpr):
    """1 / n per neuron, n = g * (||G|| + eps) (README.md; g = 1 without a learned gain); 1 without normalisation."""
    inverse = tl.full(squares.shape, 1.0, squares.dtype)
    if NORMALIZE:
        inverse = 1.0 / (gain * (tl.sqrt(squares) + _NORM_EPS))
    return inverse


@triton.jit
def _gain(norm_gain, rows, H, like, GAIN: tl.constexpr):
    """The gain g per neuron: ``norm_gain`` with GAIN, else 1."""
    gain = tl.full(like.shape, 1.0, like.dtype)
    if GAIN:
        gain = tl.load(norm_gain + rows, mask=rows < H, other=1.0)
    return gain


@triton.jit
def _update(
    src, dst, checkpoint, save_checkpoint, weight, weight_lambda, weight_gamma, bias_lambda, bias_gamma, clamp,
    retention, x, h0, outputs, t, b, B, T, IN, H, K, Kp, keep, keep_next, h, inverse_norm, gain,
    RECURRENT: tl.constexpr, OJA: tl.constexpr, PLASTIC: tl.constexpr, CLAMP: tl.constexpr, POST: tl.constexpr,
    RETAIN: tl.constexpr, ENERGY: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    F_t into dst from F_{t-1} in src (may be dst), and F_{t-1} into ``checkpoint`` if ``save_checkpoint`` (a Python
    False when never). Returns the sums of step t + 1 (``_sums`` of the new F with z_{t+1}), fused into the same pass;
    with POST (norm_time="post") a second pass divides the new F by its own norm and gives them. With RETAIN (never
    with POST) the decays act at most ``retention`` (``_retained``).
    """
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < H
    squares = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    drive = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    energy = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        cols, inside, state, param = _tile(k0, rows, H, K, Kp, BLOCK_K)
        raw = tl.load(src + state, mask=inside, other=0.0)
        if save_checkpoint:
            tl.store(checkpoint + state, raw, mask=inside)
        f = keep * raw
        trace = _inputs(x, h0, outputs, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
        if OJA:
            trace -= tl.sum(f * h[:, None], axis=0)
        lam = tl.load(weight_lambda + param, mask=inside, other=0.0)
        if RETAIN:
            acting, _ = _retained(lam, inverse_norm, retention)
            decayed = acting * f
        else:
            decayed = lam * f
            if not POST:
                decayed *= inverse_norm[:, None]
        new = decayed + tl.load(weight_gamma + param, mask=inside, other=0.0) * h[:, None] * trace[None, :]
        new = _clamp(new, clamp, CLAMP)
        tl.store(dst + state, new, mask=inside)
        if POST:
            # ||W + new||^2 for the division below
            g = tl.load(weight + param, mask=inside, other=0.0) + new
            squares += tl.sum(g * g, axis=1)
        else:
            g = tl.load(weight + param, mask=inside, other=0.0) + keep_next * new
            z_next = _inputs(x, h0, outputs, t + 1, b, B, T, IN, H, K, keep_next, cols, RECURRENT)
            squares += tl.sum(g * g, axis=1)
            drive += tl.sum(g * z_next[None, :], axis=1)
            if ENERGY:
                energy += tl.sum(tl.abs(g) * (z_next * z_next)[None, :], axis=1)
    if PLASTIC:
        raw = tl.load(src + rows * Kp + K, mask=row_ok, other=0.0)
        if save_checkpoint:
            tl.store(checkpoint + rows * Kp + K, raw, mask=row_ok)
        new = (
            tl.load(bias_lambda + rows, mask=row_ok, other=0.0) * keep * raw
            + tl.load(bias_gamma + rows, mask=row_ok, other=0.0) * h
        )
        tl.store(dst + rows * Kp + K, _clamp(new, clamp, CLAMP), mask=row_ok)
    if POST:
        tl.debug_barrier()
        squares, drive, energy = _sums(
            src=dst, weight=weight, x=x, h0=h0, outputs=outputs, t=t + 1, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
            keep=keep_next, scale=_inverse_norm(squares, gain, True),
            RECURRENT=RECURRENT, ENERGY=ENERGY, RESCALE=True, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
        )  # fmt: skip
    return squares, drive, energy


@triton.jit(do_not_specialize=_SIZES[:6])
def _forward_kernel(
    x, h0, fast0, keeps, outputs, fast, energy, checkpoints,
    weight, bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain, clamp_ptr, retention_ptr,
    T, B, IN, H, K, every,
    RECURRENT: tl.constexpr, NORMALIZE: tl.constexpr, OJA: tl.constexpr, PLASTIC: tl.constexpr, CLAMP: tl.constexpr,
    GAIN: tl.constexpr, POST: tl.constexpr, RETAIN: tl.constexpr, ENERGY: tl.constexpr, CHECKPOINT: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    Sample ``program_id``: the whole sequence, F_T into ``fast``, F entering steps 0, C, 2C... into ``checkpoints``.
    """
    # 64-bit offsets from the sample on (B * S overflows int32 at large batches); within a sample, 32-bit
    # (64-bit tile offsets cost registers: docs/performance.md)
    b = tl.program_id(0).to(tl.int64)
    Kp = K
    if PLASTIC:
        Kp = K + 1
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < H
    clamp = _option(clamp_ptr, CLAMP)
    retention = _option(retention_ptr, RETAIN)
    bias_row = tl.load(bias + rows, mask=row_ok, other=0.0)
    gain = _gain(norm_gain, rows, H, bias_row, GAIN)
    # F_0 is only read: the first update writes F_1 into fast, where the later steps update it in place
    src = fast0 + b * H * Kp
    dst = fast + b * H * Kp
    keep = tl.load(keeps + b)
    squares, drive, step_energy = _sums(
        src=src, weight=weight, x=x, h0=h0, outputs=outputs, t=0, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
        keep=keep, scale=keep,
        RECURRENT=RECURRENT, ENERGY=ENERGY, RESCALE=False, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    for t in range(T):
        keep = tl.load(keeps + t * B + b)
        inverse_norm = _inverse_norm(squares, gain, NORMALIZE)
        u = drive * inverse_norm + bias_row
        if PLASTIC:
            u += keep * tl.load(src + rows * Kp + K, mask=row_ok, other=0.0)
        # tanh from exp(-2|u|) <= 1: no overflow for any u
        e = tl.exp(-2.0 * tl.abs(u))
        h = tl.where(u < 0, -1.0, 1.0) * (1.0 - e) / (1.0 + e)
        tl.store(outputs + (t * B + b) * H + rows, h, mask=row_ok)
        if ENERGY:
            # |G| / |n|: a negative gain flips the drive, not the energy
            tl.store(energy + t * B + b, tl.sum(step_energy * tl.abs(inverse_norm), axis=0))
        # h_t is read back as part of z_{t+1} by other threads of this program
        tl.debug_barrier()
        save = False
        checkpoint = checkpoints
        if CHECKPOINT:
            save = t % every == 0
            checkpoint = checkpoints + ((t // every) * B + b) * H * Kp
        squares, drive, step_energy = _update(
            src=src, dst=dst, checkpoint=checkpoint, save_checkpoint=save,
            weight=weight, weight_lambda=weight_lambda, weight_gamma=weight_gamma,
            bias_lambda=bias_lambda, bias_gamma=bias_gamma, clamp=clamp, retention=retention,
            x=x, h0=h0, outputs=outputs, t=t, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
            keep=keep, keep_next=tl.load(keeps + (t + 1) * B + b), h=h, inverse_norm=inverse_norm, gain=gain,
            RECURRENT=RECURRENT, OJA=OJA, PLASTIC=PLASTIC, CLAMP=CLAMP, POST=POST, RETAIN=RETAIN, ENERGY=ENERGY,
            BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
        )  # fmt: skip
        tl.debug_barrier()
        src = dst


@triton.jit
def _sums_slot(segment_sums, j, H, rows):
    """Offsets of the sums (||G||^2, then G z) of the segment's step j in ``segment_sums``."""
    return segment_sums + 2 * j * H + rows, segment_sums + (2 * j + 1) * H + rows


@triton.jit
def _recompute_segment(
    checkpoint, slots, segment_sums, weight, weight_lambda, weight_gamma, bias_lambda, bias_gamma, clamp, retention,
    gain, x, h0, outputs, keeps, t0, t1, b, B, T, IN, H, K, Kp,
    RECURRENT: tl.constexpr, NORMALIZE: tl.constexpr, OJA: tl.constexpr, PLASTIC: tl.constexpr, CLAMP: tl.constexpr,
    POST: tl.constexpr, RETAIN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    The forward's arithmetic over the segment of steps [t0, t1) from its checkpoint: F entering step t0 + j + 1
    (before its reset) into ``slots`` j, and the per-neuron sums of step t0 + j into ``segment_sums`` (``_sums_slot``).
    """
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < H
    src = checkpoint
    keep = tl.load(keeps + t0 * B + b)
    squares, drive, _ = _sums(
        src=src, weight=weight, x=x, h0=h0, outputs=outputs, t=t0, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
        keep=keep, scale=keep,
        RECURRENT=RECURRENT, ENERGY=False, RESCALE=False, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    for t in range(t0, t1 - 1):
        squares_slot, drive_slot = _sums_slot(segment_sums, t - t0, H, rows)
        tl.store(squares_slot, squares, mask=row_ok)
        tl.store(drive_slot, drive, mask=row_ok)
        keep = tl.load(keeps + t * B + b)
        h = tl.load(outputs + (t * B + b) * H + rows, mask=row_ok, other=0.0)
        dst = slots + (t - t0) * H * Kp
        squares, drive, _ = _update(
            src=src, dst=dst, checkpoint=checkpoint, save_checkpoint=False,
            weight=weight, weight_lambda=weight_lambda, weight_gamma=weight_gamma,
            bias_lambda=bias_lambda, bias_gamma=bias_gamma, clamp=clamp, retention=retention,
            x=x, h0=h0, outputs=outputs, t=t, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
            keep=keep, keep_next=tl.load(keeps + (t + 1) * B + b), h=h,
            inverse_norm=_inverse_norm(squares, gain, NORMALIZE), gain=gain,
            RECURRENT=RECURRENT, OJA=OJA, PLASTIC=PLASTIC, CLAMP=CLAMP, POST=POST, RETAIN=RETAIN, ENERGY=False,
            BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
        )  # fmt: skip
        src = dst
    squares_slot, drive_slot = _sums_slot(segment_sums, t1 - 1 - t0, H, rows)
    tl.store(squares_slot, squares, mask=row_ok)
    tl.store(drive_slot, drive, mask=row_ok)


@triton.jit
def _update_tile(
    src, weight_lambda, weight_gamma, x, h0, outputs, t, b, B, T, IN, H, K, keep, h, decay_factor, retention,
    cols, state, param, inside, RECURRENT: tl.constexpr, OJA: tl.constexpr, RETAIN: tl.constexpr,
):  # fmt: skip
    """
    A tile of a step's update for the backward: F (after the reset), lambda, gamma, the trace e, the decays as they
    act, where lambda and n get a gradient through them (``free``: all of the tile unless RETAIN), the unclamped update.
    """
    f = keep * tl.load(src + state, mask=inside, other=0.0)
    lam = tl.load(weight_lambda + param, mask=inside, other=0.0)
    gam = tl.load(weight_gamma + param, mask=inside, other=0.0)
    trace = _inputs(x, h0, outputs, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
    if OJA:
        trace -= tl.sum(f * h[:, None], axis=0)
    if RETAIN:
        acting, free = _retained(lam, decay_factor, retention)
    else:
        acting = lam * decay_factor[:, None]
        free = inside
    return f, lam, gam, trace, acting, free, acting * f + gam * h[:, None] * trace[None, :]


@triton.jit
def _norm_backward(d_norm, squares, gain, GAIN: tl.constexpr):
    """
    Through n = g * (||G|| + eps), given dn per neuron: the coefficient c of G's gradient c G (the gradient of ||G||
    is G / ||G||, zero for a zero row as in torch), and the gradient of the gain g.
    """
    norm = tl.sqrt(squares)
    d_gain = tl.zeros_like(d_norm)
    if GAIN:
        d_gain = d_norm * (norm + _NORM_EPS)
        d_norm *= gain
    return tl.where(norm > 0, d_norm / tl.where(norm > 0, norm, 1.0), 0.0), d_gain


@triton.jit
def _post_norm_backward(
    src, d_state, weight, weight_lambda, weight_gamma, clamp, gain, x, h0, outputs, t, b, B, T, IN, H, K, Kp,
    keep, h, decay_factor,
    RECURRENT: tl.constexpr, OJA: tl.constexpr, CLAMP: tl.constexpr, GAIN: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    Pass 0 (norm_time="post"), through F_t = P / m with P the clamped update and m = g * (||W + P|| + eps): per
    neuron 1 / m, the coefficient c of m's share c (W + P) of the gradient of P, and the gain's gradient through m.
    """
    rows = tl.arange(0, BLOCK_H)
    new_squares = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    d_new_dot = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        cols, inside, state, param = _tile(k0, rows, H, K, Kp, BLOCK_K)
        # POST: retention_max is never relative to the norm (RETAIN off)
        _, _, _, _, _, _, updated = _update_tile(
            src, weight_lambda, weight_gamma, x, h0, outputs, t, b, B, T, IN, H, K, keep, h, decay_factor, 0.0,
            cols, state, param, inside, RECURRENT, OJA, False,
        )  # fmt: skip
        new = _clamp(updated, clamp, CLAMP)
        g_new = tl.load(weight + param, mask=inside, other=0.0) + new
        new_squares += tl.sum(g_new * g_new, axis=1)
        d_new_dot += tl.sum(tl.load(d_state + state, mask=inside, other=0.0) * new, axis=1)
    inverse_new_norm = _inverse_norm(new_squares, gain, True)
    new_coefficient, d_gain = _norm_backward(-d_new_dot * inverse_new_norm * inverse_new_norm, new_squares, gain, GAIN)
    return inverse_new_norm, new_coefficient, d_gain


@triton.jit
def _update_backward(
    src, d_state, dz_partial, grad_weight, grad_weight_lambda, grad_weight_gamma,
    weight, weight_lambda, weight_gamma, clamp, retention, x, h0, outputs, t, b, B, T, IN, H, K, Kp,
    keep, h, decay_factor, inverse_new_norm, new_coefficient,
    RECURRENT: tl.constexpr, OJA: tl.constexpr, CLAMP: tl.constexpr, POST: tl.constexpr, RETAIN: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    Pass 1, through F_t = clamp(lambda F / n + gamma h e) (POST: P = clamp(lambda F + gamma h e); RETAIN:
    clamp(min(lambda / n, rho) F + gamma h e)): adds the gradients of lambda and gamma (POST: and W's through m), turns
    dF_t in ``d_state`` into dF through the decay and writes the gradient of the trace e into ``dz_partial``. Returns
    per neuron the gradient of n through the decay and that of h.
    """
    rows = tl.arange(0, BLOCK_H)
    d_norm_through_decay = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    d_h_through_hebbian = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    d_h_through_trace = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        cols, inside, state, param = _tile(k0, rows, H, K, Kp, BLOCK_K)
        f, lam, gam, trace, acting, free, updated = _update_tile(
            src, weight_lambda, weight_gamma, x, h0, outputs, t, b, B, T, IN, H, K, keep, h, decay_factor, retention,
            cols, state, param, inside, RECURRENT, OJA, RETAIN,
        )  # fmt: skip
        d_new = tl.load(d_state + state, mask=inside, other=0.0)
        if POST:
            d_g_new = new_coefficient[:, None] * (
                tl.load(weight + param, mask=inside, other=0.0) + _clamp(updated, clamp, CLAMP)
            )
            _accumulate(grad_weight, param, d_g_new, inside)
            d_new = d_new * inverse_new_norm[:, None] + d_g_new
        d_new = _clamp_backward(d_new, updated, clamp, CLAMP)
        # d_free: the gradient lambda and n get through the decay, none where rho bounds it
        d_free = tl.where(free, d_new, 0.0)
        _accumulate(grad_weight_lambda, param, d_free * f * decay_factor[:, None], inside)
        _accumulate(grad_weight_gamma, param, d_new * h[:, None] * trace[None, :], inside)
        if not POST:
            d_norm_through_decay += tl.sum(d_free * lam * f, axis=1)
        d_h_through_hebbian += tl.sum(d_new * gam * trace[None, :], axis=1)
        d_trace = tl.sum(d_new * gam * h[:, None], axis=0)
        d_old = d_new * acting
        if OJA:
            # Oja's trace e = z - F^T h
            d_h_through_trace += tl.sum(f * d_trace[None, :], axis=1)
            d_old -= h[:, None] * d_trace[None, :]
        tl.store(d_state + state, d_old, mask=inside)
        tl.store(dz_partial + cols, d_trace, mask=cols < K)
    return d_norm_through_decay, d_h_through_hebbian - d_h_through_trace


@triton.jit
def _efficacy_backward(
    src, d_state, dz_partial, dx, dh_carry, grad_weight, weight, x, h0, outputs, t, b, B, T, IN, H, K, Kp,
    keep, d_drive, norm_coefficient, RECURRENT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    Pass 2, through G = W + F in the drive G z and the norm: adds the gradient of W, completes dF entering the step
    (then the reset's), and writes dx_t and the gradient of h_{t-1} carried to the step before (``dh_carry``).
    """
    rows = tl.arange(0, BLOCK_H)
    for k0 in range(0, K, BLOCK_K):
        cols, inside, state, param = _tile(k0, rows, H, K, Kp, BLOCK_K)
        g = tl.load(weight + param, mask=inside, other=0.0) + keep * tl.load(src + state, mask=inside, other=0.0)
        z = _inputs(x, h0, outputs, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
        d_g = d_drive[:, None] * z[None, :] + norm_coefficient[:, None] * g
        _accumulate(grad_weight, param, d_g, inside)
        d_old = tl.load(d_state + state, mask=inside, other=0.0) + d_g
        tl.store(d_state + state, keep * d_old, mask=inside)
        d_z = tl.load(dz_partial + cols, mask=cols < K, other=0.0) + tl.sum(d_drive[:, None] * g, axis=0)
        tl.store(dx + (t * B + b) * IN + cols, d_z, mask=cols < IN)
        if RECURRENT:
            tl.store(dh_carry + cols - IN, keep * d_z, mask=(cols >= IN) & (cols < K))


@triton.jit
def _step_backward(
    t, t0, checkpoint, slots, segment_sums, d_state, dz_partial, dh_carry, d_outputs, dx,
    grad_weight, grad_weight_lambda, grad_weight_gamma,
    weight, weight_lambda, weight_gamma, bias_lambda_row, bias_gamma_row, clamp, retention, gain,
    x, h0, outputs, keeps, b, B, T, IN, H, K, Kp,
    RECURRENT: tl.constexpr, NORMALIZE: tl.constexpr, OJA: tl.constexpr, PLASTIC: tl.constexpr, CLAMP: tl.constexpr,
    GAIN: tl.constexpr, POST: tl.constexpr, RETAIN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    Step t of the reverse walk, from F entering it (the segment's ``checkpoint`` or a recomputed slot): dF_t in
    ``d_state`` and dh_t (``d_outputs`` plus ``dh_carry``) into those of the step before, in place; writes dx_t and
    adds the gradients of W, lambda and gamma. Returns per neuron those of the bias, the plastic bias's lambda and
    gamma, and the gain.
    """
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < H
    zeros = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    src = tl.where(t == t0, checkpoint, slots + (t - t0 - 1) * H * Kp)
    keep = tl.load(keeps + t * B + b)
    h = tl.load(outputs + (t * B + b) * H + rows, mask=row_ok, other=0.0)
    squares_slot, drive_slot = _sums_slot(segment_sums, t - t0, H, rows)
    squares = tl.load(squares_slot, mask=row_ok, other=0.0)
    drive = tl.load(drive_slot, mask=row_ok, other=0.0)
    inverse_norm = _inverse_norm(squares, gain, NORMALIZE)
    d_h = tl.load(d_outputs + (t * B + b) * H + rows, mask=row_ok, other=0.0)
    d_h += tl.load(dh_carry + rows, mask=row_ok, other=0.0)
    tl.debug_barrier()
    decay_factor = inverse_norm
    inverse_new_norm = zeros
    new_coefficient = zeros
    d_gain = zeros
    if POST:
        decay_factor = zeros + 1.0
        inverse_new_norm, new_coefficient, d_gain = _post_norm_backward(
            src=src, d_state=d_state, weight=weight, weight_lambda=weight_lambda, weight_gamma=weight_gamma,
            clamp=clamp, gain=gain, x=x, h0=h0, outputs=outputs, t=t, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
            keep=keep, h=h, decay_factor=decay_factor,
            RECURRENT=RECURRENT, OJA=OJA, CLAMP=CLAMP, GAIN=GAIN, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
        )  # fmt: skip
    d_norm_through_decay, d_h_through_update = _update_backward(
        src=src, d_state=d_state, dz_partial=dz_partial, grad_weight=grad_weight,
        grad_weight_lambda=grad_weight_lambda, grad_weight_gamma=grad_weight_gamma,
        weight=weight, weight_lambda=weight_lambda, weight_gamma=weight_gamma, clamp=clamp, retention=retention,
        x=x, h0=h0, outputs=outputs, t=t, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp, keep=keep, h=h,
        decay_factor=decay_factor, inverse_new_norm=inverse_new_norm, new_coefficient=new_coefficient,
        RECURRENT=RECURRENT, OJA=OJA, CLAMP=CLAMP, POST=POST, RETAIN=RETAIN, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    # Per neuron, through h = tanh(G z / n + b + F_bias) and n = g (||G|| + eps)
    d_h += d_h_through_update
    d_bias_lambda = zeros
    d_bias_gamma = zeros
    if PLASTIC:
        fast_bias = keep * tl.load(src + rows * Kp + K, mask=row_ok, other=0.0)
        d_bias_new = tl.load(d_state + rows * Kp + K, mask=row_ok, other=0.0)
        d_bias_new = _clamp_backward(d_bias_new, bias_lambda_row * fast_bias + bias_gamma_row * h, clamp, CLAMP)
        d_bias_lambda = d_bias_new * fast_bias
        d_bias_gamma = d_bias_new * h
        d_h += d_bias_new * bias_gamma_row
    d_u = d_h * (1.0 - h * h)
    if PLASTIC:
        tl.store(d_state + rows * Kp + K, keep * (d_bias_new * bias_lambda_row + d_u), mask=row_ok)
    d_drive = d_u
    norm_coefficient = zeros
    if NORMALIZE:
        d_drive = d_u * inverse_norm
        d_norm = -(d_norm_through_decay + d_u * drive) * inverse_norm * inverse_norm
        norm_coefficient, d_gain_through_norm = _norm_backward(d_norm, squares, gain, GAIN)
        d_gain += d_gain_through_norm
    tl.debug_barrier()
    _efficacy_backward(
        src=src, d_state=d_state, dz_partial=dz_partial, dx=dx, dh_carry=dh_carry, grad_weight=grad_weight,
        weight=weight, x=x, h0=h0, outputs=outputs, t=t, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
        keep=keep, d_drive=d_drive, norm_coefficient=norm_coefficient,
        RECURRENT=RECURRENT, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    tl.debug_barrier()
    return d_u, d_bias_lambda, d_bias_gamma, d_gain


@triton.jit(do_not_specialize=_SIZES)
def _backward_kernel(
    x, h0, keeps, checkpoints, outputs,
    weight, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain, clamp_ptr, retention_ptr,
    d_outputs, d_fast, dx, dh_carry, segment_states, segment_sums, dz_partial,
    grad_weight, grad_weight_lambda, grad_weight_gamma, grad_bias, grad_bias_lambda, grad_bias_gamma, grad_norm_gain,
    T, B, IN, H, K, every, segments,
    RECURRENT: tl.constexpr, NORMALIZE: tl.constexpr, OJA: tl.constexpr, PLASTIC: tl.constexpr, CLAMP: tl.constexpr,
    GAIN: tl.constexpr, POST: tl.constexpr, RETAIN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """
    BPTT of sample ``program_id`` from the forward's checkpoints, segment by segment from the last: each recomputed
    (``_recompute_segment``), then walked in reverse (``_step_backward``). In place: ``d_fast`` (the gradient of F_T,
    then of F_0) and ``dh_carry`` (zero, then the gradient of h carried to the step before, finally of h0). Writes
    ``dx``; this sample's parameter gradients into ``grad_*[b]``. Scratch, per sample: ``segment_states`` (F entering
    each step of a segment but its first), ``segment_sums`` (each step's per-neuron sums), ``dz_partial`` (dz).
    """
    # 64-bit offsets from the sample on (B * S overflows int32 at large batches); within a sample, 32-bit
    # (64-bit tile offsets cost registers: docs/performance.md)
    b = tl.program_id(0).to(tl.int64)
    Kp = K
    if PLASTIC:
        Kp = K + 1
    S = H * Kp
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < H
    clamp = _option(clamp_ptr, CLAMP)
    retention = _option(retention_ptr, RETAIN)
    zeros = tl.zeros([BLOCK_H], dtype=weight.dtype.element_ty)
    bias_lambda_row = zeros
    bias_gamma_row = zeros
    if PLASTIC:
        bias_lambda_row = tl.load(bias_lambda + rows, mask=row_ok, other=0.0)
        bias_gamma_row = tl.load(bias_gamma + rows, mask=row_ok, other=0.0)
    gain = _gain(norm_gain, rows, H, zeros, GAIN)
    sum_d_bias = zeros
    sum_d_bias_lambda = zeros
    sum_d_bias_gamma = zeros
    sum_d_gain = zeros
    # This sample's rows of the buffers and per-sample gradients
    d_state = d_fast + b * S
    dz_b = dz_partial + b * K
    dh_b = dh_carry + b * H
    grad_weight_b = grad_weight + b * H * K
    grad_weight_lambda_b = grad_weight_lambda + b * H * K
    grad_weight_gamma_b = grad_weight_gamma + b * H * K
    slots = segment_states + b * (every - 1) * S
    sums_b = segment_sums + b * every * 2 * H
    for segment_from_end in range(segments):
        segment = segments - 1 - segment_from_end
        t0 = segment * every
        t1 = tl.minimum(T, t0 + every)
        checkpoint = checkpoints + (segment * B + b) * S
        _recompute_segment(
            checkpoint=checkpoint, slots=slots, segment_sums=sums_b,
            weight=weight, weight_lambda=weight_lambda, weight_gamma=weight_gamma,
            bias_lambda=bias_lambda, bias_gamma=bias_gamma, clamp=clamp, retention=retention, gain=gain,
            x=x, h0=h0, outputs=outputs, keeps=keeps, t0=t0, t1=t1, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
            RECURRENT=RECURRENT, NORMALIZE=NORMALIZE, OJA=OJA, PLASTIC=PLASTIC, CLAMP=CLAMP, POST=POST, RETAIN=RETAIN,
            BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
        )  # fmt: skip
        tl.debug_barrier()
        for step_from_end in range(t1 - t0):
            d_bias, d_bias_lambda, d_bias_gamma, d_gain = _step_backward(
                t=t1 - 1 - step_from_end, t0=t0, checkpoint=checkpoint, slots=slots, segment_sums=sums_b,
                d_state=d_state, dz_partial=dz_b, dh_carry=dh_b, d_outputs=d_outputs, dx=dx,
                grad_weight=grad_weight_b, grad_weight_lambda=grad_weight_lambda_b, grad_weight_gamma=grad_weight_gamma_b,
                weight=weight, weight_lambda=weight_lambda, weight_gamma=weight_gamma,
                bias_lambda_row=bias_lambda_row, bias_gamma_row=bias_gamma_row, clamp=clamp, retention=retention,
                gain=gain, x=x, h0=h0, outputs=outputs, keeps=keeps, b=b, B=B, T=T, IN=IN, H=H, K=K, Kp=Kp,
                RECURRENT=RECURRENT, NORMALIZE=NORMALIZE, OJA=OJA, PLASTIC=PLASTIC, CLAMP=CLAMP, GAIN=GAIN,
                POST=POST, RETAIN=RETAIN, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
            )  # fmt: skip
            sum_d_bias += d_bias
            sum_d_bias_lambda += d_bias_lambda
            sum_d_bias_gamma += d_bias_gamma
            sum_d_gain += d_gain
    tl.store(grad_bias + b * H + rows, sum_d_bias, mask=row_ok)
    if PLASTIC:
        tl.store(grad_bias_lambda + b * H + rows, sum_d_bias_lambda, mask=row_ok)
        tl.store(grad_bias_gamma + b * H + rows, sum_d_bias_gamma, mask=row_ok)
    if GAIN:
        tl.store(grad_norm_gain + b * H + rows, sum_d_gain, mask=row_ok)


def _flags(config: StpnConfig, plastic: bool, gain: bool) -> dict[str, bool]:
    return {
        "RECURRENT": config.recurrent,
        "NORMALIZE": config.normalize,
        "OJA": config.rule == "oja",
        "PLASTIC": plastic,
        "CLAMP": config.clamp is not None,
        "GAIN": gain,
        "POST": config.normalize and config.norm_time == "post",
        "RETAIN": config.relative_lambda_max is not None,
    }


def _blocks(hidden: int, presynaptic: int) -> dict[str, int]:
    """All neurons in one tile, as many columns as TILE_ELEMENTS allows (at least 4); 4 elements a thread."""
    block_h = triton.next_power_of_2(hidden)
    block_k = min(triton.next_power_of_2(presynaptic), max(4, TILE_ELEMENTS // block_h))
    return {"BLOCK_H": block_h, "BLOCK_K": block_k, "num_warps": min(8, max(1, block_h * block_k // 128))}


def _keeps(starts: th.Tensor | None, x: th.Tensor) -> th.Tensor:
    """1 - episode_starts (T + 1, B): the factor of the state entering each step, and a row of ones past the end."""
    keeps = x.new_ones(x.shape[0] + 1, x.shape[1])
    if starts is not None:
        keeps[:-1] -= starts
    return keeps


def _on_device_of(x: th.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it that of ``x`` (cuda:1 while cuda:0 is current)."""
    return th.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _options(config: StpnConfig, like: th.Tensor) -> dict[str, th.Tensor]:
    """
    The float options as one-element tensors, not kernel arguments (Triton passes Python floats as float32): the
    clamp and rho, the bound of lambda / n (``config.relative_lambda_max``). An option whose flag is off is never read:
    the clamp's tensor stands in for rho then, so that the default costs no second allocation (rollouts: one a step).
    """
    clamp = like.new_full((1,), 0.0 if config.clamp is None else config.clamp)
    rho = config.relative_lambda_max
    return {"clamp_ptr": clamp, "retention_ptr": clamp if rho is None else like.new_full((1,), rho)}


def forward(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    starts: th.Tensor | None,
    params: StpnParams,
    config: StpnConfig,
    record_energy: bool,
    every: int,
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
    """The sequence: outputs (T, B, H), F_T, energy (T, B) if asked, and checkpoints (ceil(T / every), B, H, Kp)."""
    weight, bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = (
        None if p is None else p.contiguous() for p in params
    )
    assert weight is not None and bias is not None, "the layer always has a weight and a bias"
    x, h0, fast0 = x.contiguous(), h0.contiguous(), fast0.contiguous()
    steps, batch, inputs = x.shape
    hidden, presynaptic = weight.shape
    outputs = x.new_empty(steps, batch, hidden)
    fast = th.empty_like(fast0)
    energy = x.new_empty(steps, batch) if record_energy else None
    checkpoints = x.new_empty(math.ceil(steps / every) if every else 0, *fast0.shape)
    plastic = bias_lambda is not None
    # Absent tensors are never read (their flags are off): any pointer stands in for them
    with _on_device_of(x):
        _forward_kernel[(batch,)](
            x=x,
            h0=h0,
            fast0=fast0,
            keeps=_keeps(starts, x),
            outputs=outputs,
            fast=fast,
            energy=x if energy is None else energy,
            checkpoints=checkpoints,
            weight=weight,
            bias=bias,
            weight_lambda=weight_lambda,
            weight_gamma=weight_gamma,
            bias_lambda=bias_lambda if plastic else bias,
            bias_gamma=bias_gamma if plastic else bias,
            norm_gain=bias if norm_gain is None else norm_gain,
            **_options(config, x),
            T=steps,
            B=batch,
            IN=inputs,
            H=hidden,
            K=presynaptic,
            every=every,
            ENERGY=record_energy,
            CHECKPOINT=every > 0,
            **_flags(config, plastic, norm_gain is not None),
            **_blocks(hidden, presynaptic),
        )
    # The Triton kernels have no divergence flag yet (the C++ one has): F_T is checked once per call
    raise_if_diverged(th.isfinite(fast).all())
    return outputs, fast, energy, checkpoints


def backward(
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
    """BPTT: the gradients of x, h0, F_0 and of the parameters (None for absent ones)."""
    weight, _, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = (
        None if p is None else p.contiguous() for p in params
    )
    assert weight is not None, "the layer always has a weight"
    x, h0 = x.contiguous(), h0.contiguous()
    steps, batch, inputs = x.shape
    hidden, presynaptic = weight.shape
    plastic = bias_lambda is not None
    d_fast = d_fast.contiguous().clone()
    dh0 = th.zeros_like(h0)
    dx = th.empty_like(x)
    segment = min(every, steps)
    states = x.new_empty(batch, max(segment - 1, 1), *checkpoints.shape[2:])
    sums = x.new_empty(batch, segment, 2, hidden)
    dz = x.new_empty(batch, presynaptic)
    grad_w, grad_l, grad_g = (x.new_zeros(batch, hidden, presynaptic) for _ in range(3))
    grad_b, grad_bl, grad_bg, grad_ng = (x.new_zeros(batch, hidden) for _ in range(4))
    with _on_device_of(x):
        _backward_kernel[(batch,)](
            x=x,
            h0=h0,
            keeps=_keeps(starts, x),
            checkpoints=checkpoints.contiguous(),
            outputs=outputs.contiguous(),
            weight=weight,
            weight_lambda=weight_lambda,
            weight_gamma=weight_gamma,
            bias_lambda=bias_lambda if plastic else weight,
            bias_gamma=bias_gamma if plastic else weight,
            norm_gain=weight if norm_gain is None else norm_gain,
            **_options(config, x),
            d_outputs=d_outputs.contiguous(),
            d_fast=d_fast,
            dx=dx,
            dh_carry=dh0,
            segment_states=states,
            segment_sums=sums,
            dz_partial=dz,
            grad_weight=grad_w,
            grad_weight_lambda=grad_l,
            grad_weight_gamma=grad_g,
            grad_bias=grad_b,
            grad_bias_lambda=grad_bl,
            grad_bias_gamma=grad_bg,
            grad_norm_gain=grad_ng,
            T=steps,
            B=batch,
            IN=inputs,
            H=hidden,
            K=presynaptic,
            every=segment,
            segments=checkpoints.shape[0],
            **_flags(config, plastic, norm_gain is not None),
            **_blocks(hidden, presynaptic),
        )
    # The per-sample parameter gradients, summed over the batch once per call
    grads = StpnParams(
        weight=grad_w.sum(0),
        bias=grad_b.sum(0),
        weight_lambda=grad_l.sum(0),
        weight_gamma=grad_g.sum(0),
        bias_lambda=grad_bl.sum(0) if plastic else None,
        bias_gamma=grad_bg.sum(0) if plastic else None,
        norm_gain=None if norm_gain is None else grad_ng.sum(0),
    )
    return StpnGradients(dx, dh0, d_fast, grads)
