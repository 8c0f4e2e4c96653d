"""
The float64 spec the op's tests compare every path against, and the helpers they share (not a test module,
so that the layer's tests and the op's import it without importing each other).

``spec_sequence`` re-states the recurrence of ``sb3_stpn/ops/stpn/README.md`` step by step with einsum,
independently of ``naive.py``; ``make_problem``, ``run_path`` and ``results_and_grads`` build a random problem,
run it on the path ``SB3_STPN_KERNEL`` names and collect its results and gradients keyed by name;
``assert_close_by_name`` compares two such dicts; ``spy_on_backward`` records the checkpoint segments a fused
backward walks; ``options_id`` and ``layer_options_id`` name a parametrized case.
"""

import inspect
import math
from types import ModuleType

import pytest
import torch as th

from sb3_stpn.ops.stpn import StpnConfig, StpnParams, stpn_sequence

STEPS, BATCH, INPUTS, HIDDEN = 7, 3, 4, 5


def spec_sequence(x, h0, fast0, weight, bias, lam, gam, bias_lam, bias_gam, norm_gain=None, *, starts, config):
    """The recurrence of the op's README.md, step by step with einsum: outputs, final h and F, energy."""
    presynaptic = weight.shape[1]
    gain = 1.0 if norm_gain is None else norm_gain

    def row_norm(efficacy: th.Tensor) -> th.Tensor:
        return gain * (efficacy.square().sum(-1).sqrt() + 1e-16) if config.normalize else th.ones_like(h0[:, :1])

    post = config.normalize and config.norm_time == "post"
    if config.lambda_max is not None:
        lam = lam.clamp(max=config.lambda_max)
        bias_lam = None if bias_lam is None else bias_lam.clamp(max=config.lambda_max)
    # retention_max: relative to the norm with the update "pre" (below, per step), a fixed bound elsewhere
    relative = config.retention_max is not None and config.normalize and not post
    if config.retention_max is not None:
        if not relative:
            lam = lam.clamp(max=config.retention_max)
        bias_lam = None if bias_lam is None else bias_lam.clamp(max=config.retention_max)
    h, fast = h0, fast0
    outputs, energies = [], []
    for t in range(x.shape[0]):
        if starts is not None:
            keep = (starts[t] == 0).to(x.dtype)
            h, fast = h * keep[:, None], fast * keep[:, None, None]
        z = th.cat([x[t], h], dim=1) if config.recurrent else x[t]
        synaptic = fast[:, :, :presynaptic]
        efficacy = weight + synaptic
        norm = row_norm(efficacy)
        drive = th.einsum("bik,bk->bi", efficacy, z) / norm + bias
        if bias_lam is not None:
            drive = drive + fast[:, :, presynaptic]
        h = th.tanh(drive)
        trace = z - th.einsum("bik,bi->bk", synaptic, h) if config.rule == "oja" else z
        decayed = synaptic if post else synaptic / norm[..., None]
        acting = th.minimum(lam, config.retention_max * norm[..., None]) if relative else lam
        new_fast = acting * decayed + gam * th.einsum("bi,bk->bik", h, trace)
        if config.clamp is not None:
            new_fast = th.clamp(new_fast, -config.clamp, config.clamp)
        if post:
            new_fast = new_fast / row_norm(weight + new_fast)[..., None]
        if bias_lam is not None:
            new_bias = bias_lam * fast[:, :, presynaptic] + bias_gam * h
            if config.clamp is not None:
                new_bias = th.clamp(new_bias, -config.clamp, config.clamp)
            new_fast = th.cat([new_fast, new_bias[..., None]], dim=-1)
        energies.append(th.einsum("bik,bk->b", (efficacy / norm[..., None]).abs(), z.square()).detach())
        outputs.append(h)
        fast = new_fast
    return th.stack(outputs), h, fast, th.stack(energies)


def make_problem(
    config: StpnConfig,
    plastic_bias: bool,
    scalar: bool,
    norm_gain: bool = False,
    dtype: th.dtype = th.float64,
    seed: int = 0,
    hidden: int = HIDDEN,
):
    """
    Random inputs, nonzero state, parameters and resets mid-sequence (all but the resets require grad). The
    tensors are keyed by the names of ``stpn_sequence``'s state and ``StpnParams``, in ``spec_sequence``'s order.
    """
    generator = th.Generator().manual_seed(seed)
    presynaptic = INPUTS + (hidden if config.recurrent else 0)

    def rand(*shape: int, scale: float = 1.0, mean: float = 0.0) -> th.Tensor:
        return (mean + scale * th.randn(shape, generator=generator, dtype=th.float64)).to(dtype).requires_grad_()

    plastic_shape = () if scalar else (hidden, presynaptic)
    bias_shape = () if scalar else (hidden,)
    tensors = {
        "x": rand(STEPS, BATCH, INPUTS),
        "h0": rand(BATCH, hidden, scale=0.5),
        "fast0": rand(BATCH, hidden, presynaptic + int(plastic_bias), scale=0.3),
        "weight": rand(hidden, presynaptic, scale=0.5),
        "bias": rand(hidden, scale=0.5),
        "weight_lambda": rand(*plastic_shape),
        "weight_gamma": rand(*plastic_shape, scale=0.5),
        "bias_lambda": rand(*bias_shape) if plastic_bias else None,
        "bias_gamma": rand(*bias_shape, scale=0.5) if plastic_bias else None,
        "norm_gain": rand(hidden, scale=0.3, mean=1.0) if norm_gain else None,
    }
    starts = th.zeros(STEPS, BATCH, dtype=dtype)
    starts[2, 0] = starts[4, 1] = starts[5, 0] = 1
    return tensors, starts


def run_path(tensors: dict, starts: th.Tensor, config: StpnConfig) -> tuple:
    params = StpnParams(**{name: tensors[name] for name in StpnParams._fields})
    return stpn_sequence(
        tensors["x"],
        (tensors["h0"], tensors["fast0"]),
        params=params,
        config=config,
        episode_starts=starts,
        record_energy=True,
    )


def named_results(outputs: tuple) -> dict[str, th.Tensor]:
    """The four results of ``stpn_sequence`` (or ``spec_sequence``), keyed by name."""
    return dict(zip(("outputs", "h_T", "F_T", "energy"), outputs, strict=True))


def results_and_grads(outputs: tuple, tensors: dict) -> dict[str, th.Tensor]:
    """
    The results, then ``grad <name>``: the gradients of a loss on outputs, h_T and F_T w.r.t. every tensor of
    the problem that is not None (zero when unused).
    """
    out, h, fast, _ = outputs
    loss = (
        (out * th.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() + 0.3 * h.sum() + 0.7 * (fast * fast.detach()).sum()
    )
    leaves = {name: tensor for name, tensor in tensors.items() if tensor is not None}
    grads = th.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return named_results(outputs) | {
        f"grad {name}": th.zeros_like(leaf) if grad is None else grad
        for (name, leaf), grad in zip(leaves.items(), grads, strict=True)
    }


def assert_close_by_name(
    got: dict[str, th.Tensor],
    expected: dict[str, th.Tensor],
    *,
    rtol: float,
    atol: float,
    label: str = "",
    dtype: th.dtype | None = None,
) -> None:
    """
    Every tensor of ``got`` close to the one of the same name in ``expected`` (the same names on both sides), a
    failure naming it. With ``dtype``, each of ``got`` has that dtype and is compared in float64.
    """
    assert got.keys() == expected.keys(), f"{label}: results {sorted(got)}, expected {sorted(expected)}"
    for name, want in expected.items():
        have = got[name]
        if dtype is not None:
            assert have.dtype == dtype, f"{label} {name}: {have.dtype}, expected {dtype}"
            have = have.double()
        th.testing.assert_close(have, want, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{label} {name}: {m}".strip())


def spy_on_backward(monkeypatch: pytest.MonkeyPatch, backend: ModuleType) -> list[tuple[int, int]]:
    """
    Wraps the fused backend's ``backward`` (looked up on the module at each call) to record, per call, the
    segment length ``every`` and the number of checkpoints it recomputes from.
    """
    original = backend.backward
    signature = inspect.signature(original)
    calls: list[tuple[int, int]] = []

    def backward(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        calls.append((arguments["every"], arguments["checkpoints"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(backend, "backward", backward)
    return calls


def assert_several_segments(calls: list[tuple[int, int]], steps: int) -> None:
    """Every recorded backward walked more than one checkpoint segment of a sequence of ``steps``, one per checkpoint."""
    assert calls, "no fused backward ran"
    for every, segments in calls:
        assert segments == math.ceil(steps / every), f"{segments} checkpoints for T={steps} in segments of {every}"
        assert segments > 1, f"one segment of {every} steps for T={steps}: the checkpoint recompute went untested"


def options_id(
    config: StpnConfig,
    *,
    plastic_bias: bool = False,
    scalar: bool = False,
    norm_gain: bool = False,
    hidden: int | None = None,
) -> str:
    """
    A readable test id for a case, e.g. ``oja-postnorm-clamp0.4-stpnf-plasticbias-gain-H20``: the rule, the
    normalisation (``norm``: before the update, ``postnorm``: after it, ``nonorm``), then only what differs
    from the defaults (an STPNr with fixed bias, no gain, per-synapse plasticity and the tests' width).
    """
    norm = {"pre": "norm", "post": "postnorm"}[config.norm_time] if config.normalize else "nonorm"
    parts = [config.rule, norm]
    if config.clamp is not None:
        parts.append(f"clamp{config.clamp:g}")
    if config.lambda_max is not None:
        parts.append(f"lmax{config.lambda_max:g}")
    if config.retention_max is not None:
        parts.append(f"rmax{config.retention_max:g}")
    if not config.recurrent:
        parts.append("stpnf")
    flags = {"plasticbias": plastic_bias, "scalar": scalar, "gain": norm_gain}
    parts += [name for name, on in flags.items() if on]
    if hidden is not None and hidden != HIDDEN:
        parts.append(f"H{hidden}")
    return "-".join(parts)


def layer_options_id(options: dict) -> str:
    """``options_id`` of the keyword arguments of an ``STPN`` layer (``plastic=False``: ``twin``)."""
    known = set(StpnConfig.__dataclass_fields__) | {"plastic_bias", "scalar_plasticity", "norm_gain", "plastic"}
    assert set(options) <= known, f"no id for {sorted(set(options) - known)}"
    config = StpnConfig(**{k: v for k, v in options.items() if k in StpnConfig.__dataclass_fields__})
    flags = {
        "plastic_bias": options.get("plastic_bias", False),
        "scalar": options.get("scalar_plasticity", False),
        "norm_gain": options.get("norm_gain", False),
    }
    return options_id(config, **flags) + ("" if options.get("plastic", True) else "-twin")
