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
- Backward: the recompute reads F and writes it to the segment buffer (``2 S + 3 P``); pass 1 reads F,
  reads and writes dF and this sample's lambda and gamma gradients (``7 S + 2 P``); pass 2 reads F,
  reads and writes dF and the W gradient (``5 S + P``): ``14 S + 6 P``.
- Training, forward + backward: ``16 S + 9 P``, about 25 H K (the ``cpp`` kernel: 22 H K, see
  ``benchmarks/layer.py``). The per-sample parameter gradients (3 P a sample) are summed over the batch
  once per call, after the kernel.
- ``norm_time="post"`` adds a pass that divides the new F by its norm (F read and written, ``2 S``,
  forward and in the recompute) and, backward, a pass for that norm's gradient (F and dF read) and the
  W gradient's read and write in pass 1: ``8 S`` more per training step.

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
def _inputs(x, h0, out, t, b, B, T, IN, H, K, keep, cols, RECURRENT: tl.constexpr):
    """
    Columns ``cols`` of z_t = (x_t, keep * h_{t-1}) of sample b, zero past K. For t = T (the last step's
    fused sums of a next step, never used) those of step T - 1, so that every read stays in bounds.
    """
    step = tl.minimum(t, T - 1)
    z = tl.load(x + (step * B + b) * IN + cols, mask=cols < IN, other=0.0)
    if RECURRENT:
        previous = tl.where(step > 0, out + ((step - 1) * B + b) * H, h0 + b * H)
        z += keep * tl.load(previous + cols - IN, mask=(cols >= IN) & (cols < K), other=0.0)
    return z


@triton.jit
def _sums(
    src,
    W,
    x,
    h0,
    out,
    t,
    b,
    B,
    T,
    IN,
    H,
    K,
    Kp,
    keep,
    scale,
    RECURRENT: tl.constexpr,
    ENERGY: tl.constexpr,
    RESCALE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """
    Per neuron, over the rows of G = W + keep * F (src): ||G||^2, G z_t and (if ENERGY) sum |G| z_t^2.
    With RESCALE, F's rows (not a plastic bias) are first multiplied by ``scale`` in place.
    """
    rows = tl.arange(0, BLOCK_H)
    squares = tl.zeros([BLOCK_H], dtype=W.dtype.element_ty)
    drive = tl.zeros([BLOCK_H], dtype=W.dtype.element_ty)
    energy = tl.zeros([BLOCK_H], dtype=W.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        inside = (rows[:, None] < H) & (cols[None, :] < K)
        state = rows[:, None] * Kp + cols[None, :]
        f = tl.load(src + state, mask=inside, other=0.0)
        if RESCALE:
            f *= scale[:, None]
            tl.store(src + state, f, mask=inside)
        g = tl.load(W + rows[:, None] * K + cols[None, :], mask=inside, other=0.0) + keep * f
        z = _inputs(x, h0, out, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
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
def _gain(NG, rows, H, like, GAIN: tl.constexpr):
    gain = tl.full(like.shape, 1.0, like.dtype)
    if GAIN:
        gain = tl.load(NG + rows, mask=rows < H, other=1.0)
    return gain


@triton.jit
def _update(
    src,
    dst,
    ckpt,
    save,
    W,
    L,
    G,
    BL,
    BG,
    clamp,
    x,
    h0,
    out,
    t,
    b,
    B,
    T,
    IN,
    H,
    K,
    Kp,
    keep,
    keep_next,
    h,
    inverse_norm,
    gain,
    RECURRENT: tl.constexpr,
    OJA: tl.constexpr,
    PLASTIC: tl.constexpr,
    CLAMP: tl.constexpr,
    POST: tl.constexpr,
    ENERGY: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """
    F_t into dst from F_{t-1} in src (may be dst), and F_{t-1} into ckpt if ``save`` (a Python False when
    never). Returns the sums of step t + 1 (``_sums`` of the new F with z_{t+1}), fused into the same pass;
    with POST (norm_time="post") a second pass divides the new F by its own norm and gives them.
    """
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < H
    squares = tl.zeros([BLOCK_H], dtype=W.dtype.element_ty)
    drive = tl.zeros([BLOCK_H], dtype=W.dtype.element_ty)
    energy = tl.zeros([BLOCK_H], dtype=W.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        inside = row_ok[:, None] & (cols[None, :] < K)
        state = rows[:, None] * Kp + cols[None, :]
        param = rows[:, None] * K + cols[None, :]
        raw = tl.load(src + state, mask=inside, other=0.0)
        if save:
            tl.store(ckpt + state, raw, mask=inside)
        f = keep * raw
        trace = _inputs(x, h0, out, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
        if OJA:
            trace -= tl.sum(f * h[:, None], axis=0)
        decayed = tl.load(L + param, mask=inside, other=0.0) * f
        if not POST:
            decayed *= inverse_norm[:, None]
        new = decayed + tl.load(G + param, mask=inside, other=0.0) * h[:, None] * trace[None, :]
        if CLAMP:
            new = tl.minimum(tl.maximum(new, -clamp), clamp)
        tl.store(dst + state, new, mask=inside)
        if POST:
            # ||W + new||^2 for the division below
            g = tl.load(W + param, mask=inside, other=0.0) + new
            squares += tl.sum(g * g, axis=1)
        else:
            g = tl.load(W + param, mask=inside, other=0.0) + keep_next * new
            z_next = _inputs(x, h0, out, t + 1, b, B, T, IN, H, K, keep_next, cols, RECURRENT)
            squares += tl.sum(g * g, axis=1)
            drive += tl.sum(g * z_next[None, :], axis=1)
            if ENERGY:
                energy += tl.sum(tl.abs(g) * (z_next * z_next)[None, :], axis=1)
    if PLASTIC:
        raw = tl.load(src + rows * Kp + K, mask=row_ok, other=0.0)
        if save:
            tl.store(ckpt + rows * Kp + K, raw, mask=row_ok)
        new = tl.load(BL + rows, mask=row_ok, other=0.0) * keep * raw + tl.load(BG + rows, mask=row_ok, other=0.0) * h
        if CLAMP:
            new = tl.minimum(tl.maximum(new, -clamp), clamp)
        tl.store(dst + rows * Kp + K, new, mask=row_ok)
    if POST:
        tl.debug_barrier()
        squares, drive, energy = _sums(
            dst, W, x, h0, out, t + 1, b, B, T, IN, H, K, Kp, keep_next, _inverse_norm(squares, gain, True),
            RECURRENT, ENERGY, RESCALE=True, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
        )  # fmt: skip
    return squares, drive, energy


@triton.jit(do_not_specialize=_SIZES[:6])
def _forward_kernel(
    x,
    h0,
    f0,
    keeps,
    out,
    fast,
    energy,
    ckpt,
    W,
    bias,
    L,
    G,
    BL,
    BG,
    NG,
    clamp_ptr,
    T,
    B,
    IN,
    H,
    K,
    every,
    RECURRENT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    OJA: tl.constexpr,
    PLASTIC: tl.constexpr,
    CLAMP: tl.constexpr,
    GAIN: tl.constexpr,
    POST: tl.constexpr,
    ENERGY: tl.constexpr,
    CHECKPOINT: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Sample ``program_id``: the whole sequence, F_T into ``fast``, F entering steps 0, C, 2C... into ``ckpt``."""
    # 64-bit offsets from the sample on (B * S overflows int32 at large batches); within a sample, 32-bit
    # (64-bit tile offsets cost registers: docs/performance.md)
    b = tl.program_id(0).to(tl.int64)
    Kp = K
    if PLASTIC:
        Kp = K + 1
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < H
    clamp = 0.0
    if CLAMP:
        clamp = tl.load(clamp_ptr)
    bias_row = tl.load(bias + rows, mask=row_ok, other=0.0)
    gain = _gain(NG, rows, H, bias_row, GAIN)
    # F_0 is only read: the first update writes F_1 into fast, where the later steps update it in place
    src = f0 + b * H * Kp
    dst = fast + b * H * Kp
    keep = tl.load(keeps + b)
    squares, drive, en = _sums(
        src, W, x, h0, out, 0, b, B, T, IN, H, K, Kp, keep, keep, RECURRENT, ENERGY, False, BLOCK_H, BLOCK_K
    )
    for t in range(T):
        keep = tl.load(keeps + t * B + b)
        inverse_norm = _inverse_norm(squares, gain, NORMALIZE)
        u = drive * inverse_norm + bias_row
        if PLASTIC:
            u += keep * tl.load(src + rows * Kp + K, mask=row_ok, other=0.0)
        # tanh from exp(-2|u|) <= 1: no overflow for any u
        e = tl.exp(-2.0 * tl.abs(u))
        h = tl.where(u < 0, -1.0, 1.0) * (1.0 - e) / (1.0 + e)
        tl.store(out + (t * B + b) * H + rows, h, mask=row_ok)
        if ENERGY:
            # |G| / |n|: a negative gain flips the drive, not the energy
            tl.store(energy + t * B + b, tl.sum(en * tl.abs(inverse_norm), axis=0))
        # h_t is read back as part of z_{t+1} by other threads of this program
        tl.debug_barrier()
        save = False
        checkpoint = ckpt
        if CHECKPOINT:
            save = t % every == 0
            checkpoint = ckpt + ((t // every) * B + b) * H * Kp
        keep_next = tl.load(keeps + (t + 1) * B + b)
        squares, drive, en = _update(
            src,
            dst,
            checkpoint,
            save,
            W,
            L,
            G,
            BL,
            BG,
            clamp,
            x,
            h0,
            out,
            t,
            b,
            B,
            T,
            IN,
            H,
            K,
            Kp,
            keep,
            keep_next,
            h,
            inverse_norm,
            gain,
            RECURRENT,
            OJA,
            PLASTIC,
            CLAMP,
            POST,
            ENERGY,
            BLOCK_H,
            BLOCK_K,
        )
        tl.debug_barrier()
        src = dst


@triton.jit
def _step_update(
    src, L, G, x, h0, out, t, b, B, T, IN, H, K, keep, h, decay_factor, cols, state, param, inside,
    RECURRENT: tl.constexpr, OJA: tl.constexpr,
):  # fmt: skip
    """A tile of a step's update for the backward: F (after the reset), lambda, gamma, the trace e, the unclamped update."""
    f = keep * tl.load(src + state, mask=inside, other=0.0)
    lam = tl.load(L + param, mask=inside, other=0.0)
    gam = tl.load(G + param, mask=inside, other=0.0)
    trace = _inputs(x, h0, out, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
    if OJA:
        trace -= tl.sum(f * h[:, None], axis=0)
    return f, lam, gam, trace, lam * f * decay_factor[:, None] + gam * h[:, None] * trace[None, :]


@triton.jit(do_not_specialize=_SIZES)
def _backward_kernel(
    x,
    h0,
    keeps,
    ckpt,
    out,
    W,
    L,
    G,
    BL,
    BG,
    NG,
    clamp_ptr,
    d_out,
    d_fast,
    dx,
    dh,
    states,
    sums,
    dz,
    grad_w,
    grad_l,
    grad_g,
    grad_b,
    grad_bl,
    grad_bg,
    grad_ng,
    T,
    B,
    IN,
    H,
    K,
    every,
    segments,
    RECURRENT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    OJA: tl.constexpr,
    PLASTIC: tl.constexpr,
    CLAMP: tl.constexpr,
    GAIN: tl.constexpr,
    POST: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """
    BPTT of sample ``program_id`` from the forward's checkpoints. In place: ``d_fast`` (the gradient of
    F_T, then of F_0) and ``dh`` (zero, then the gradient of h carried to the step before, finally of h0).
    Writes ``dx``; adds this sample's parameter gradients into ``grad_*[b]``.
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
    clamp = 0.0
    if CLAMP:
        clamp = tl.load(clamp_ptr)
    zeros = tl.zeros([BLOCK_H], dtype=W.dtype.element_ty)
    bias_lambda = zeros
    bias_gamma = zeros
    if PLASTIC:
        bias_lambda = tl.load(BL + rows, mask=row_ok, other=0.0)
        bias_gamma = tl.load(BG + rows, mask=row_ok, other=0.0)
    gain = _gain(NG, rows, H, zeros, GAIN)
    acc_b = zeros
    acc_bl = zeros
    acc_bg = zeros
    acc_ng = zeros
    d_state = d_fast + b * S
    carry = dh + b * H + rows
    grad_wb = grad_w + b * H * K
    grad_lb = grad_l + b * H * K
    grad_gb = grad_g + b * H * K
    dz_b = dz + b * K
    # F entering step t0 + j + 1 (before its reset) in slot j; the sums of step t0 + j in sums[b, j]
    slots = states + b * (every - 1) * S
    sums_b = sums + b * every * 2 * H
    for segment_from_end in range(segments):
        segment = segments - 1 - segment_from_end
        t0 = segment * every
        t1 = tl.minimum(T, t0 + every)
        start = ckpt + (segment * B + b) * S
        # Recompute the segment's states and sums from its checkpoint: the forward's arithmetic
        src = start
        keep = tl.load(keeps + t0 * B + b)
        squares, drive, _ = _sums(
            src, W, x, h0, out, t0, b, B, T, IN, H, K, Kp, keep, keep, RECURRENT, False, False, BLOCK_H, BLOCK_K
        )
        for t in range(t0, t1 - 1):
            tl.store(sums_b + ((t - t0) * 2) * H + rows, squares, mask=row_ok)
            tl.store(sums_b + ((t - t0) * 2 + 1) * H + rows, drive, mask=row_ok)
            keep = tl.load(keeps + t * B + b)
            h = tl.load(out + (t * B + b) * H + rows, mask=row_ok, other=0.0)
            dst = slots + (t - t0) * S
            squares, drive, _ = _update(
                src,
                dst,
                start,
                False,
                W,
                L,
                G,
                BL,
                BG,
                clamp,
                x,
                h0,
                out,
                t,
                b,
                B,
                T,
                IN,
                H,
                K,
                Kp,
                keep,
                tl.load(keeps + (t + 1) * B + b),
                h,
                _inverse_norm(squares, gain, NORMALIZE),
                gain,
                RECURRENT,
                OJA,
                PLASTIC,
                CLAMP,
                POST,
                ENERGY=False,
                BLOCK_H=BLOCK_H,
                BLOCK_K=BLOCK_K,
            )
            src = dst
        tl.store(sums_b + ((t1 - 1 - t0) * 2) * H + rows, squares, mask=row_ok)
        tl.store(sums_b + ((t1 - 1 - t0) * 2 + 1) * H + rows, drive, mask=row_ok)
        tl.debug_barrier()
        # Walk the segment in reverse
        for step_from_end in range(t1 - t0):
            t = t1 - 1 - step_from_end
            src = tl.where(t == t0, start, slots + (t - t0 - 1) * S)
            keep = tl.load(keeps + t * B + b)
            h = tl.load(out + (t * B + b) * H + rows, mask=row_ok, other=0.0)
            squares = tl.load(sums_b + ((t - t0) * 2) * H + rows, mask=row_ok, other=0.0)
            drive = tl.load(sums_b + ((t - t0) * 2 + 1) * H + rows, mask=row_ok, other=0.0)
            inverse_norm = _inverse_norm(squares, gain, NORMALIZE)
            d_h = tl.load(d_out + (t * B + b) * H + rows, mask=row_ok, other=0.0) + tl.load(carry, mask=row_ok, other=0.0)
            tl.debug_barrier()
            decay_factor = inverse_norm
            if POST:
                decay_factor = zeros + 1.0
                # Pass 0, through F_t = P / m with P the clamped update and m = g * (||W + P|| + eps): per
                # neuron m and the sum of dF_t P, which turn dF_t into the gradient of P in pass 1
                new_squares = zeros
                d_new_dot = zeros
                for k0 in range(0, K, BLOCK_K):
                    cols = k0 + tl.arange(0, BLOCK_K)
                    inside = row_ok[:, None] & (cols[None, :] < K)
                    state = rows[:, None] * Kp + cols[None, :]
                    param = rows[:, None] * K + cols[None, :]
                    f, lam, gam, trace, updated = _step_update(
                        src, L, G, x, h0, out, t, b, B, T, IN, H, K, keep, h, decay_factor, cols, state, param, inside,
                        RECURRENT, OJA,
                    )  # fmt: skip
                    new = updated
                    if CLAMP:
                        new = tl.minimum(tl.maximum(updated, -clamp), clamp)
                    g_new = tl.load(W + param, mask=inside, other=0.0) + new
                    new_squares += tl.sum(g_new * g_new, axis=1)
                    d_new_dot += tl.sum(tl.load(d_state + state, mask=inside, other=0.0) * new, axis=1)
                inverse_new_norm = _inverse_norm(new_squares, gain, True)
                new_norm = tl.sqrt(new_squares)
                d_new_norm = -d_new_dot * inverse_new_norm * inverse_new_norm
                if GAIN:
                    acc_ng += d_new_norm * (new_norm + _NORM_EPS)
                    d_new_norm *= gain
                new_coefficient = tl.where(new_norm > 0, d_new_norm / tl.where(new_norm > 0, new_norm, 1.0), 0.0)
            # Pass 1, through F_t = clamp(lambda F / n + gamma h e) (POST: P = clamp(lambda F + gamma h e)):
            # the gradients of lambda and gamma, dF through the decay, and per neuron the sums for dn (s1)
            # and dh (s2, Oja's s3)
            s1 = zeros
            s2 = zeros
            s3 = zeros
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                inside = row_ok[:, None] & (cols[None, :] < K)
                state = rows[:, None] * Kp + cols[None, :]
                param = rows[:, None] * K + cols[None, :]
                f, lam, gam, trace, updated = _step_update(
                    src, L, G, x, h0, out, t, b, B, T, IN, H, K, keep, h, decay_factor, cols, state, param, inside,
                    RECURRENT, OJA,
                )  # fmt: skip
                d_new = tl.load(d_state + state, mask=inside, other=0.0)
                if POST:
                    new = updated
                    if CLAMP:
                        new = tl.minimum(tl.maximum(updated, -clamp), clamp)
                    d_g_new = new_coefficient[:, None] * (tl.load(W + param, mask=inside, other=0.0) + new)
                    tl.store(grad_wb + param, tl.load(grad_wb + param, mask=inside, other=0.0) + d_g_new, mask=inside)
                    d_new = d_new * inverse_new_norm[:, None] + d_g_new
                if CLAMP:
                    d_new = tl.where(tl.abs(updated) <= clamp, d_new, 0.0)
                tl.store(
                    grad_lb + param,
                    tl.load(grad_lb + param, mask=inside, other=0.0) + d_new * f * decay_factor[:, None],
                    mask=inside,
                )
                tl.store(
                    grad_gb + param,
                    tl.load(grad_gb + param, mask=inside, other=0.0) + d_new * h[:, None] * trace[None, :],
                    mask=inside,
                )
                if not POST:
                    s1 += tl.sum(d_new * lam * f, axis=1)
                s2 += tl.sum(d_new * gam * trace[None, :], axis=1)
                d_trace = tl.sum(d_new * gam * h[:, None], axis=0)
                d_old = d_new * lam * decay_factor[:, None]
                if OJA:
                    s3 += tl.sum(f * d_trace[None, :], axis=1)
                    d_old -= h[:, None] * d_trace[None, :]
                tl.store(d_state + state, d_old, mask=inside)
                tl.store(dz_b + cols, d_trace, mask=cols < K)
            # Per neuron, through h = tanh(G z / n + b + F_bias) and n = g (||G|| + eps)
            d_h += s2 - s3
            if PLASTIC:
                fast_bias = keep * tl.load(src + rows * Kp + K, mask=row_ok, other=0.0)
                d_bias_new = tl.load(d_state + rows * Kp + K, mask=row_ok, other=0.0)
                if CLAMP:
                    new = bias_lambda * fast_bias + bias_gamma * h
                    d_bias_new = tl.where(tl.abs(new) <= clamp, d_bias_new, 0.0)
                acc_bl += d_bias_new * fast_bias
                acc_bg += d_bias_new * h
                d_h += d_bias_new * bias_gamma
            d_u = d_h * (1.0 - h * h)
            acc_b += d_u
            if PLASTIC:
                tl.store(d_state + rows * Kp + K, keep * (d_bias_new * bias_lambda + d_u), mask=row_ok)
            d_drive = d_u
            coefficient = zeros
            if NORMALIZE:
                d_drive = d_u * inverse_norm
                norm = tl.sqrt(squares)
                d_norm = -(s1 + d_u * drive) * inverse_norm * inverse_norm
                if GAIN:
                    # n = g * (||G|| + eps)
                    acc_ng += d_norm * (norm + _NORM_EPS)
                    d_norm *= gain
                # The gradient of ||G|| is G / ||G||, zero for a zero row as in torch
                coefficient = tl.where(norm > 0, d_norm / tl.where(norm > 0, norm, 1.0), 0.0)
            tl.debug_barrier()
            # Pass 2, through G = W + F: the gradient of W, the rest of dF (then its reset), dz
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                inside = row_ok[:, None] & (cols[None, :] < K)
                state = rows[:, None] * Kp + cols[None, :]
                param = rows[:, None] * K + cols[None, :]
                g = tl.load(W + param, mask=inside, other=0.0) + keep * tl.load(src + state, mask=inside, other=0.0)
                z = _inputs(x, h0, out, t, b, B, T, IN, H, K, keep, cols, RECURRENT)
                d_g = d_drive[:, None] * z[None, :] + coefficient[:, None] * g
                tl.store(grad_wb + param, tl.load(grad_wb + param, mask=inside, other=0.0) + d_g, mask=inside)
                d_old = tl.load(d_state + state, mask=inside, other=0.0) + d_g
                tl.store(d_state + state, keep * d_old, mask=inside)
                d_z = tl.load(dz_b + cols, mask=cols < K, other=0.0) + tl.sum(d_drive[:, None] * g, axis=0)
                tl.store(dx + (t * B + b) * IN + cols, d_z, mask=cols < IN)
                if RECURRENT:
                    tl.store(dh + b * H + cols - IN, keep * d_z, mask=(cols >= IN) & (cols < K))
            tl.debug_barrier()
    tl.store(grad_b + b * H + rows, acc_b, mask=row_ok)
    if PLASTIC:
        tl.store(grad_bl + b * H + rows, acc_bl, mask=row_ok)
        tl.store(grad_bg + b * H + rows, acc_bg, mask=row_ok)
    if GAIN:
        tl.store(grad_ng + b * H + rows, acc_ng, mask=row_ok)


def _flags(config: StpnConfig, plastic: bool, gain: bool) -> dict[str, bool]:
    return {
        "RECURRENT": config.recurrent,
        "NORMALIZE": config.normalize,
        "OJA": config.rule == "oja",
        "PLASTIC": plastic,
        "CLAMP": config.clamp is not None,
        "GAIN": gain,
        "POST": config.normalize and config.norm_time == "post",
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


def _clamp_tensor(config: StpnConfig, like: th.Tensor) -> th.Tensor:
    # A tensor, not a kernel argument: Triton passes Python floats as float32
    return like.new_full((1,), 0.0 if config.clamp is None else config.clamp)


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
            f0=fast0,
            keeps=_keeps(starts, x),
            out=outputs,
            fast=fast,
            energy=x if energy is None else energy,
            ckpt=checkpoints,
            W=weight,
            bias=bias,
            L=weight_lambda,
            G=weight_gamma,
            BL=bias_lambda if plastic else bias,
            BG=bias_gamma if plastic else bias,
            NG=bias if norm_gain is None else norm_gain,
            clamp_ptr=_clamp_tensor(config, x),
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
            ckpt=checkpoints.contiguous(),
            out=outputs.contiguous(),
            W=weight,
            L=weight_lambda,
            G=weight_gamma,
            BL=bias_lambda if plastic else weight,
            BG=bias_gamma if plastic else weight,
            NG=weight if norm_gain is None else norm_gain,
            clamp_ptr=_clamp_tensor(config, x),
            d_out=d_outputs.contiguous(),
            d_fast=d_fast,
            dx=dx,
            dh=dh0,
            states=states,
            sums=sums,
            dz=dz,
            grad_w=grad_w,
            grad_l=grad_l,
            grad_g=grad_g,
            grad_b=grad_b,
            grad_bl=grad_bl,
            grad_bg=grad_bg,
            grad_ng=grad_ng,
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
