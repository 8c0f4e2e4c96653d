"""The reference STPN: one step of plain differentiable torch ops, and the loop over a sequence."""

import torch as th

from sb3_stpn.ops.stpn.config import NORM_EPS, StpnConfig, StpnParams, raise_if_diverged


def row_norm(efficacy: th.Tensor, norm_gain: th.Tensor | None) -> th.Tensor:
    """n = g * (||efficacy||_2 over K + eps), per row and sample; g = 1 without a learned gain."""
    norm = th.linalg.vector_norm(efficacy, dim=-1) + NORM_EPS
    return norm if norm_gain is None else norm * norm_gain


def stpn_step(
    x: th.Tensor,
    h: th.Tensor,
    fast: th.Tensor,
    params: StpnParams,
    config: StpnConfig,
    record_energy: bool = False,
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
    """
    One step of the STPN (README.md, One step).

    :param x: Inputs (B, I).
    :param h: The previous outputs (B, H).
    :param fast: The fast weights ``F`` (B, H, K), with one more column for a plastic bias.
    :param params: The layer's learned tensors.
    :param config: The options of the recurrence.
    :param record_energy: Whether to return the energy too.
    :return: the new ``h``, the new ``F`` and, if asked, the energy per sample (B,).
    """
    weight, bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = params
    z = th.cat([x, h], dim=-1) if config.recurrent else x
    presynaptic = z.shape[-1]
    synaptic_fast = fast[..., :presynaptic]
    efficacy = weight + synaptic_fast
    drive = th.bmm(efficacy, z.unsqueeze(-1)).squeeze(-1)
    post_norm = config.normalize and config.norm_time == "post"
    decayed = synaptic_fast
    if config.normalize:
        norm = row_norm(efficacy, norm_gain)
        drive = drive / norm
        if not post_norm:
            decayed = synaptic_fast / norm.unsqueeze(-1)
    drive = drive + bias
    if bias_lambda is not None:
        drive = drive + fast[..., presynaptic]
    h_new = th.tanh(drive)

    if config.rule == "oja":
        presynaptic_trace = z - th.bmm(h_new.unsqueeze(1), synaptic_fast).squeeze(1)
    else:
        presynaptic_trace = z
    decay = weight_lambda
    if config.relative_lambda_max is not None:
        decay = th.minimum(weight_lambda, config.relative_lambda_max * norm.unsqueeze(-1))
    fast_new = decay * decayed + weight_gamma * (h_new.unsqueeze(-1) * presynaptic_trace.unsqueeze(1))
    if config.clamp is not None:
        fast_new = fast_new.clamp(-config.clamp, config.clamp)
    if post_norm:
        fast_new = fast_new / row_norm(weight + fast_new, norm_gain).unsqueeze(-1)
    if bias_lambda is not None and bias_gamma is not None:
        fast_bias = bias_lambda * fast[..., presynaptic] + bias_gamma * h_new
        if config.clamp is not None:
            fast_bias = fast_bias.clamp(-config.clamp, config.clamp)
        fast_new = th.cat([fast_new, fast_bias.unsqueeze(-1)], dim=-1)

    energy = None
    if record_energy:
        with th.no_grad():
            magnitude = efficacy.abs()
            if config.normalize:
                magnitude = magnitude / norm.abs().unsqueeze(-1)
            energy = (magnitude * z.square().unsqueeze(1)).sum(dim=(1, 2))
    return h_new, fast_new, energy


def stpn_sequence_reference(
    x: th.Tensor,
    state: tuple[th.Tensor, th.Tensor],
    *,
    params: StpnParams,
    config: StpnConfig,
    episode_starts: th.Tensor | None = None,
    record_energy: bool = False,
) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
    """
    Run the STPN over ``x`` (T, B, I) from ``state = (h0, F_0)``, one autograd-recorded step at a time.

    ``episode_starts`` (T, B) zeroes the state of a row before the step it marks.

    :param x: Inputs (T, B, I).
    :param state: ``(h0, F_0)``, of shapes (B, H) and (B, H, K), with one more column of ``F`` for a plastic bias.
    :param params: The layer's learned tensors.
    :param config: The options of the recurrence.
    :param episode_starts: (T, B) of 0/1, or None: no resets.
    :param record_energy: Whether to return the energy per step and sample too.
    :return: outputs (T, B, H), final ``h``, final ``F`` and, if asked, energy (T, B).
    """
    h0, fast0 = state
    h, fast = h0, fast0
    outputs, energies = [], []
    finite = th.ones((), dtype=th.bool, device=x.device)
    for t in range(x.shape[0]):
        if episode_starts is not None:
            keep = 1.0 - episode_starts[t].to(x.dtype)
            h = h * keep.unsqueeze(-1)
            fast = fast * keep.view(-1, 1, 1)
        h_new, fast, energy = stpn_step(x[t], h, fast, params, config, record_energy)
        # Accumulated on the device, read once per call
        finite = finite & th.isfinite(fast).all()
        # STPNf has no recurrent input: its carried h is just the last output
        h = h_new
        outputs.append(h_new)
        energies.append(energy)
    raise_if_diverged(finite)
    energy = th.stack([e for e in energies if e is not None]) if record_energy else None
    return th.stack(outputs), h, fast, energy
