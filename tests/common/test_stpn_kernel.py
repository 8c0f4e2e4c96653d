"""Every path of ``stpn_sequence`` against a float64 re-statement of ``shared/STPN.md`` written here."""

import itertools
import logging

import pytest
import torch as th

from sb3_stpn.common import stpn_kernel
from sb3_stpn.common.stpn_kernel import KERNEL_ENV, StpnConfig, stpn_sequence

STEPS, BATCH, INPUTS, HIDDEN = 7, 3, 4, 5


@pytest.fixture(scope="module")
def cpp_available() -> bool:
    return stpn_kernel.cpp_kernel_available()


@pytest.fixture(params=["reference", "torch", "cpp"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, cpp_available: bool) -> str:
    """Forces a path, with segments short enough that the fused paths recompute several checkpoints."""
    if request.param == "cpp" and not cpp_available:
        pytest.skip("the C++ kernel could not be built here (no compiler?)")
    monkeypatch.setenv(KERNEL_ENV, request.param)
    monkeypatch.setattr(stpn_kernel, "SEGMENT_BUDGET_BYTES", 1)
    return request.param


def spec_sequence(x, h0, fast0, weight, bias, lam, gam, bias_lam, bias_gam, *, starts, config):
    """shared/STPN.md, step by step with einsum: outputs, final h and F, energy."""
    presynaptic = weight.shape[1]
    h, fast = h0, fast0
    outputs, energies = [], []
    for t in range(x.shape[0]):
        if starts is not None:
            keep = (starts[t] == 0).to(x.dtype)
            h, fast = h * keep[:, None], fast * keep[:, None, None]
        z = th.cat([x[t], h], dim=1) if config.recurrent else x[t]
        synaptic = fast[:, :, :presynaptic]
        efficacy = weight + synaptic
        norm = efficacy.square().sum(-1).sqrt() + 1e-16 if config.normalize else th.ones_like(h[:, :1])
        drive = th.einsum("bik,bk->bi", efficacy, z) / norm + bias
        if bias_lam is not None:
            drive = drive + fast[:, :, presynaptic]
        h = th.tanh(drive)
        trace = z - th.einsum("bik,bi->bk", synaptic, h) if config.rule == "oja" else z
        new_fast = lam * synaptic / norm[..., None] + gam * th.einsum("bi,bk->bik", h, trace)
        if bias_lam is not None:
            new_bias = bias_lam * fast[:, :, presynaptic] + bias_gam * h
            new_fast = th.cat([new_fast, new_bias[..., None]], dim=-1)
        if config.clamp is not None:
            new_fast = th.clamp(new_fast, -config.clamp, config.clamp)
        energies.append(th.einsum("bik,bk->b", efficacy.abs() / norm[..., None], z.square()).detach())
        outputs.append(h)
        fast = new_fast
    return th.stack(outputs), h, fast, th.stack(energies)


def make_problem(config: StpnConfig, plastic_bias: bool, scalar: bool, dtype: th.dtype = th.float64, seed: int = 0):
    """Random inputs, nonzero state, parameters and resets mid-sequence (all but the resets require grad)."""
    generator = th.Generator().manual_seed(seed)
    presynaptic = INPUTS + (HIDDEN if config.recurrent else 0)

    def rand(*shape: int, scale: float = 1.0) -> th.Tensor:
        return (scale * th.randn(shape, generator=generator, dtype=th.float64)).to(dtype).requires_grad_()

    plastic_shape = () if scalar else (HIDDEN, presynaptic)
    bias_shape = () if scalar else (HIDDEN,)
    tensors = {
        "x": rand(STEPS, BATCH, INPUTS),
        "h0": rand(BATCH, HIDDEN, scale=0.5),
        "fast0": rand(BATCH, HIDDEN, presynaptic + int(plastic_bias), scale=0.3),
        "weight": rand(HIDDEN, presynaptic, scale=0.5),
        "bias": rand(HIDDEN, scale=0.5),
        "lam": rand(*plastic_shape),
        "gam": rand(*plastic_shape, scale=0.5),
        "bias_lam": rand(*bias_shape) if plastic_bias else None,
        "bias_gam": rand(*bias_shape, scale=0.5) if plastic_bias else None,
    }
    starts = th.zeros(STEPS, BATCH, dtype=dtype)
    starts[2, 0] = starts[4, 1] = starts[5, 0] = 1
    return tensors, starts


def run_path(tensors: dict, starts: th.Tensor, config: StpnConfig) -> tuple:
    t = tensors
    bias_plasticity = None if t["bias_lam"] is None else (t["bias_lam"], t["bias_gam"])
    return stpn_sequence(
        t["x"], t["h0"], t["fast0"], starts, t["weight"], t["bias"], t["lam"], t["gam"], bias_plasticity, config, True
    )


def results_and_grads(outputs: tuple, tensors: dict) -> list[th.Tensor]:
    """The outputs, then the gradients of a loss on outputs, h_T and F_T w.r.t. every input (zero when unused)."""
    out, h, fast, energy = outputs
    loss = (out * th.linspace(-1, 1, HIDDEN, dtype=out.dtype)).sum() + 0.3 * h.sum() + 0.7 * (fast * fast.detach()).sum()
    leaves = [v for v in tensors.values() if v is not None]
    grads = th.autograd.grad(loss, leaves, allow_unused=True)
    return [out, h, fast, energy] + [th.zeros_like(v) if g is None else g for g, v in zip(grads, leaves, strict=True)]


CONFIGS = [
    (StpnConfig(recurrent=recurrent, normalize=normalize, clamp=clamp, rule=rule), plastic_bias, scalar)
    for recurrent, normalize, clamp, rule, plastic_bias, scalar in itertools.product(
        (True, False), (True, False), (None, 0.4), ("hebbian", "oja"), (False, True), (False, True)
    )
]


@pytest.mark.parametrize(("config", "plastic_bias", "scalar"), CONFIGS)
def test_matches_spec_float64(kernel: str, config: StpnConfig, plastic_bias: bool, scalar: bool) -> None:
    tensors, starts = make_problem(config, plastic_bias, scalar)
    expected = results_and_grads(spec_sequence(*tensors.values(), config=config, starts=starts), tensors)
    got = results_and_grads(run_path(tensors, starts, config), tensors)
    names = ["outputs", "h_T", "F_T", "energy", *(f"grad {k}" for k, v in tensors.items() if v is not None)]
    for name, want, have in zip(names, expected, got, strict=True):
        th.testing.assert_close(have, want, rtol=1e-9, atol=1e-10, msg=lambda m, name=name: f"{kernel} {name}: {m}")


@pytest.mark.parametrize(
    "config",
    [StpnConfig(), StpnConfig(rule="oja", recurrent=False), StpnConfig(normalize=False, rule="oja")],
)
@pytest.mark.parametrize("plastic_bias", [False, True])
def test_gradcheck_fused(kernel: str, config: StpnConfig, plastic_bias: bool) -> None:
    if kernel == "reference":
        pytest.skip("gradcheck targets the hand-derived backward of the fused paths")
    tensors, starts = make_problem(config, plastic_bias, scalar=False)
    names = [k for k, v in tensors.items() if v is not None]

    def function(*leaves: th.Tensor) -> tuple[th.Tensor, ...]:
        out, h, fast, _ = run_path({**tensors, **dict(zip(names, leaves, strict=True))}, starts, config)
        return out, h, fast

    assert th.autograd.gradcheck(function, [tensors[k] for k in names], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", [StpnConfig(clamp=0.4, rule="oja"), StpnConfig(recurrent=False)])
def test_float32_close_to_float64(kernel: str, config: StpnConfig) -> None:
    tensors64, starts = make_problem(config, plastic_bias=True, scalar=False)
    tensors32 = {k: None if v is None else v.detach().float().requires_grad_() for k, v in tensors64.items()}
    expected = results_and_grads(spec_sequence(*tensors64.values(), config=config, starts=starts), tensors64)
    got = results_and_grads(run_path(tensors32, starts.float(), config), tensors32)
    for want, have in zip(expected, got, strict=True):
        assert have.dtype == th.float32
        th.testing.assert_close(have.double(), want, rtol=1e-4, atol=1e-5)


def test_inference_without_grad_matches(kernel: str) -> None:
    """Rollouts run under no_grad, T=1, without checkpoints."""
    config = StpnConfig(clamp=0.4)
    tensors, starts = make_problem(config, plastic_bias=True, scalar=False)
    expected = spec_sequence(*tensors.values(), config=config, starts=starts)
    with th.no_grad():
        got = run_path(tensors, starts, config)
        first = run_path({**tensors, "x": tensors["x"][:1]}, starts[:1], config)
    for want, have in zip(expected, got, strict=True):
        th.testing.assert_close(have, want.detach(), rtol=1e-9, atol=1e-10)
    th.testing.assert_close(first[0][0], expected[0][0].detach(), rtol=1e-9, atol=1e-10)


def test_fallback_when_the_build_fails(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken_build() -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setattr(stpn_kernel, "_build_cpp_extension", broken_build)
    stpn_kernel._cpp_ops.cache_clear()
    try:
        monkeypatch.setenv(KERNEL_ENV, "auto")
        x = th.zeros(2, 1, 3)
        with caplog.at_level(logging.WARNING, logger=stpn_kernel.__name__):
            assert stpn_kernel.kernel_choice(x) == "torch"
            assert stpn_kernel.kernel_choice(x) == "torch"
        warnings = [r for r in caplog.records if "C++ STPN kernel is unavailable" in r.getMessage()]
        assert len(warnings) == 1
        config = StpnConfig()
        tensors, starts = make_problem(config, plastic_bias=False, scalar=False)
        expected = spec_sequence(*tensors.values(), config=config, starts=starts)
        th.testing.assert_close(run_path(tensors, starts, config)[0], expected[0])
        monkeypatch.setenv(KERNEL_ENV, "cpp")
        with pytest.raises(RuntimeError, match="could not be built"):
            stpn_kernel.kernel_choice(x)
    finally:
        monkeypatch.undo()
        stpn_kernel._cpp_ops.cache_clear()


def test_auto_and_bad_choice(monkeypatch: pytest.MonkeyPatch, cpp_available: bool) -> None:
    monkeypatch.setenv(KERNEL_ENV, "auto")
    assert stpn_kernel.kernel_choice(th.zeros(1, 1, 1)) == ("cpp" if cpp_available else "torch")
    assert stpn_kernel.kernel_choice(th.zeros(1, 1, 1, dtype=th.float16)) == "torch"
    monkeypatch.setenv(KERNEL_ENV, "cuda")
    with pytest.raises(ValueError, match=KERNEL_ENV):
        stpn_kernel.kernel_choice(th.zeros(1, 1, 1))


def test_checkpoint_interval() -> None:
    assert stpn_kernel.checkpoint_interval(32, 1) == 32
    assert stpn_kernel.checkpoint_interval(32, stpn_kernel.SEGMENT_BUDGET_BYTES) == 6
    assert stpn_kernel.checkpoint_interval(1, 10**12) == 1
