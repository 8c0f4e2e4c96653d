"""The input checks of the STPN op: a ``ValueError`` naming the first bad shape, dtype or device."""

import torch as th

from sb3_stpn.ops.stpn.config import StpnConfig, StpnParams


def _shape_error(name: str, expected: tuple, got: tuple, fix: str) -> ValueError:
    # An LSTM-style state carries a leading layer axis of size 1: say so rather than only the shapes
    if len(got) == len(expected) + 1 and got[0] == 1 and tuple(got[1:]) == expected:
        fix = "drop the leading layer axis of size 1 (an LSTM-style state): pass (h[0], F[0])"
    return ValueError(f"STPN: {name} must have shape {expected}, got {tuple(got)}: {fix}")


def check_inputs(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    params: StpnParams,
    config: StpnConfig,
) -> None:
    """
    Raise a ``ValueError`` naming the expected and received shape, dtype or device of the first bad input.

    The parameters' dtype and device are ``weight``'s (``Module.to`` moves them together), so only their
    shapes are checked here.
    """
    weight = params.weight
    hidden, presynaptic = weight.shape
    inputs = presynaptic - hidden if config.recurrent else presynaptic
    x_shape = x.shape
    if len(x_shape) != 3 or x_shape[2] != inputs:
        raise _shape_error("input x", ("T", "B", inputs), tuple(x_shape), "pass (time, batch, features)")
    steps, batch, _ = x_shape
    if steps == 0 or batch == 0:
        raise ValueError(f"STPN: input x of shape {tuple(x_shape)} is empty: pass at least one step and one sample")
    dtype, device = weight.dtype, weight.device
    for name, tensor in (("x", x), ("the state h", h0), ("the state F", fast0)):
        if tensor.dtype != dtype or tensor.device != device:
            raise ValueError(
                f"STPN: {name} is {tensor.dtype} on {tensor.device} but the layer is {dtype} on {device}: "
                "convert one to the other (.to(dtype, device))"
            )
    state_fix = f"pass the state this layer returned for a batch of {batch} (or None for zeros)"
    if h0.shape != (batch, hidden):
        raise _shape_error("the state h", (batch, hidden), tuple(h0.shape), state_fix)
    fast_shape = (batch, hidden, presynaptic + (params.bias_lambda is not None))
    if fast0.shape != fast_shape:
        raise _shape_error("the state F", fast_shape, tuple(fast0.shape), state_fix)
    if episode_starts is not None:
        if episode_starts.shape != (steps, batch):
            raise _shape_error("episode_starts", (steps, batch), tuple(episode_starts.shape), "one flag per step and sample")
        if episode_starts.device != device:
            raise ValueError(f"STPN: episode_starts is on {episode_starts.device}, x on {device}: move it to {device}")
    # Per neuron, or per synapse, or (scalar plasticity) one scalar
    neuron, synapse = (hidden,), (hidden, presynaptic)
    # The others than weight (checked above), without building a dict on every call of a rollout
    for name, parameter in zip(params._fields[1:], params[1:], strict=True):
        if parameter is not None:
            allowed = (synapse, ()) if name.startswith("weight") else (neuron, ()) if name.startswith("bias_") else (neuron,)
            if parameter.shape not in allowed:
                raise _shape_error(name, allowed[0], tuple(parameter.shape), "pass the layer's own parameter")
