"""
The ``torch`` path: the reference loop without a graph, and a hand-derived BPTT, one batched step at a time.

The backward is derived by hand rather than by autograd over each recomputed segment (``torch.utils.checkpoint``'s
plan, tried in issue 29): with the same checkpoints, autograd's took 1.1-1.3x the time of this one on CPU and held
1.8-2.8x its peak memory (``benchmarks/layer.py`` sizes), since its graph keeps about four copies of F a step where
this keeps one.
"""

import torch as th

from sb3_stpn.ops.stpn.config import NORM_EPS, StpnConfig, StpnGradients, StpnParams
from sb3_stpn.ops.stpn.naive import stpn_sequence_reference, stpn_step

# The recompute buffer holds the segment of the whole batch (StpnBackend)
PER_BATCH_SEGMENT = True


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
    """The reference loop, segment by segment, keeping F at each segment start (none if ``every`` is 0)."""
    steps = x.shape[0]
    every = every or steps
    h, fast = h0, fast0
    checkpoints, outputs, energies = [], [], []
    for t0 in range(0, steps, every):
        checkpoints.append(fast)
        segment = slice(t0, t0 + every)
        out, h, fast, energy = stpn_sequence_reference(
            x[segment],
            (h, fast),
            params=params,
            config=config,
            episode_starts=None if starts is None else starts[segment],
            record_energy=record_energy,
        )
        outputs.append(out)
        energies.append(energy)
    energy = th.cat([e for e in energies if e is not None]) if record_energy else None
    return th.cat(outputs), fast, energy, th.stack(checkpoints)


def _norm_backward(
    d_norm: th.Tensor, efficacy: th.Tensor, raw_norm: th.Tensor, norm_gain: th.Tensor | None, grads: dict[str, th.Tensor]
) -> th.Tensor:
    """
    Through n = g * (||efficacy|| + eps): the gradient of ``efficacy`` given that of n, adding g's to ``grads``.

    ``raw_norm`` is ||efficacy|| without eps; its gradient efficacy / ||efficacy|| is zero for a zero row, as in torch.
    """
    if norm_gain is not None:
        grads["norm_gain"] += (d_norm * (raw_norm + NORM_EPS)).sum(0)
        d_norm = d_norm * norm_gain
    return th.where(raw_norm > 0, d_norm / raw_norm, 0.0).unsqueeze(-1) * efficacy


def _step_backward(
    z: th.Tensor,
    fast: th.Tensor,
    h: th.Tensor,
    d_fast: th.Tensor,
    dh: th.Tensor,
    params: StpnParams,
    grads: dict[str, th.Tensor],
    config: StpnConfig,
) -> tuple[th.Tensor, th.Tensor]:
    """
    Hand-derived backward of ``stpn_step`` for a batch: ``fast`` is F entering the step (after a reset).

    :param d_fast: gradient of F after the step; ``dh``: the whole gradient of the step's output ``h``.
    :param grads: the gradients of the parameters the layer has, by name, accumulated in place.
    :return: the gradients of ``z`` and of F entering the step.
    """
    weight, _, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = params
    presynaptic = z.shape[-1]
    synaptic = fast[..., :presynaptic]
    d_new = d_fast[..., :presynaptic]
    efficacy = weight + synaptic
    h_col = h.unsqueeze(-1)
    trace = z - th.bmm(h.unsqueeze(1), synaptic).squeeze(1) if config.rule == "oja" else z
    trace_row = trace.unsqueeze(1)
    post_norm = config.normalize and config.norm_time == "post"
    decayed = synaptic
    if config.normalize:
        raw_norm = th.linalg.vector_norm(efficacy, dim=-1)
        norm = raw_norm + NORM_EPS if norm_gain is None else (raw_norm + NORM_EPS) * norm_gain
        inv_norm = 1.0 / norm
        if not post_norm:
            decayed = synaptic * inv_norm.unsqueeze(-1)
    # The decays as they act: with retention_max relative to the norm, at most rho * n, and where bound they pass no
    # gradient to lambda, nor to n through the decay (F keeps exactly rho of itself)
    acting = weight_lambda
    if config.relative_lambda_max is not None:
        bound = config.relative_lambda_max * norm.unsqueeze(-1)
        free = weight_lambda < bound
        acting = th.where(free, weight_lambda, bound)
    updated = acting * decayed + weight_gamma * h_col * trace_row
    if post_norm:
        # Through F_t = P / m with P the (clamped) update and m = g * (||W + P|| + eps)
        clamped = updated if config.clamp is None else updated.clamp(-config.clamp, config.clamp)
        new_efficacy = weight + clamped
        new_raw_norm = th.linalg.vector_norm(new_efficacy, dim=-1)
        inv_new_norm = 1.0 / (new_raw_norm + NORM_EPS)
        if norm_gain is not None:
            inv_new_norm = inv_new_norm / norm_gain
        d_new_norm = -(d_new * clamped).sum(-1) * inv_new_norm.square()
        d_new_efficacy = _norm_backward(d_new_norm, new_efficacy, new_raw_norm, norm_gain, grads)
        grads["weight"] += d_new_efficacy.sum(0)
        d_new = d_new * inv_new_norm.unsqueeze(-1) + d_new_efficacy
    if config.clamp is not None:
        d_new = d_new * (updated.abs() <= config.clamp)
    d_acting = d_new * decayed
    grads["weight_lambda"] += (d_acting if config.relative_lambda_max is None else d_acting * free).sum(0)
    grads["weight_gamma"] += (d_new * h_col * trace_row).sum(0)
    d_gamma_new = d_new * weight_gamma
    d_trace = (d_gamma_new * h_col).sum(1)
    dh = dh + (d_gamma_new * trace_row).sum(-1)
    d_synaptic = d_new * acting
    if config.normalize and not post_norm:
        d_synaptic = d_synaptic * inv_norm.unsqueeze(-1)
    if config.rule == "oja":
        d_synaptic = d_synaptic - h_col * d_trace.unsqueeze(1)
        dh = dh - th.bmm(synaptic, d_trace.unsqueeze(-1)).squeeze(-1)
    if bias_lambda is not None and bias_gamma is not None:
        fast_bias = fast[..., presynaptic]
        d_bias_new = d_fast[..., presynaptic]
        if config.clamp is not None:
            d_bias_new = d_bias_new * ((bias_lambda * fast_bias + bias_gamma * h).abs() <= config.clamp)
        grads["bias_lambda"] += (d_bias_new * fast_bias).sum(0)
        grads["bias_gamma"] += (d_bias_new * h).sum(0)
        dh = dh + d_bias_new * bias_gamma
    d_drive = dh * (1.0 - h.square())
    grads["bias"] += d_drive.sum(0)
    d_raw = d_drive
    d_efficacy_through_norm = None
    if config.normalize:
        drive = th.bmm(efficacy, z.unsqueeze(-1)).squeeze(-1)
        d_raw = d_drive * inv_norm
        d_decayed_norm: th.Tensor | float = 0.0
        if not post_norm:
            through_decay = d_new * weight_lambda * synaptic
            d_decayed_norm = (through_decay if config.relative_lambda_max is None else through_decay * free).sum(-1)
        d_norm = -(d_decayed_norm + d_drive * drive) * inv_norm.square()
        d_efficacy_through_norm = _norm_backward(d_norm, efficacy, raw_norm, norm_gain, grads)
    d_efficacy = d_raw.unsqueeze(-1) * z.unsqueeze(1)
    if d_efficacy_through_norm is not None:
        d_efficacy = d_efficacy_through_norm + d_efficacy
    grads["weight"] += d_efficacy.sum(0)
    d_synaptic = d_synaptic + d_efficacy
    dz = d_trace + th.bmm(d_raw.unsqueeze(1), efficacy).squeeze(1)
    if bias_lambda is not None:
        d_fast_bias = d_bias_new * bias_lambda + d_drive
        d_synaptic = th.cat([d_synaptic, d_fast_bias.unsqueeze(-1)], dim=-1)
    return dz, d_synaptic


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
    """BPTT with torch ops: per segment, recompute the states entering its steps, then walk it in reverse."""
    steps, _, inputs = x.shape
    grads = {name: th.zeros_like(p) for name, p in params._asdict().items() if p is not None}
    dx = th.empty_like(x)
    dh_carry = th.zeros_like(h0)
    keep = None if starts is None else (1.0 - starts).unsqueeze(-1)

    def step_input(t: int) -> tuple[th.Tensor, th.Tensor]:
        h_prev = outputs[t - 1] if t > 0 else h0
        if keep is not None:
            h_prev = h_prev * keep[t]
        return (th.cat([x[t], h_prev], dim=-1) if config.recurrent else x[t]), h_prev

    for segment in reversed(range(checkpoints.shape[0])):
        t0, t1 = segment * every, min(steps, (segment + 1) * every)
        fast = checkpoints[segment]
        states = []
        for t in range(t0, t1):
            if keep is not None:
                fast = fast * keep[t].unsqueeze(-1)
            states.append(fast)
            if t + 1 < t1:
                _, fast, _ = stpn_step(x[t], step_input(t)[1], fast, params, config)
        for t in reversed(range(t0, t1)):
            z, _ = step_input(t)
            dz, d_fast = _step_backward(z, states[t - t0], outputs[t], d_fast, d_outputs[t] + dh_carry, params, grads, config)
            dx[t] = dz[:, :inputs]
            dh_carry = dz[:, inputs:] if config.recurrent else th.zeros_like(dh_carry)
            if keep is not None:
                d_fast = d_fast * keep[t].unsqueeze(-1)
                dh_carry = dh_carry * keep[t]
    return StpnGradients(dx, dh_carry, d_fast, StpnParams(**grads))
