"""The STPN layer's interface: parameters, initialisation, variants, state and reset semantics."""

import math

import pytest
import torch as th

from sb3_stpn import STPN
from sb3_stpn.common import stpn as stpn_module
from sb3_stpn.ops.stpn import DivergedStateError, StpnConfig, stpn_sequence
from tests.ops.stpn.spec import assert_close_by_name, layer_options_id, named_results, spec_sequence

INPUT, HIDDEN, BATCH, STEPS = 3, 5, 4, 6


@pytest.mark.parametrize("recurrent", [True, False], ids=["stpnr", "stpnf"])
def test_parameters_follow_the_spec(recurrent: bool) -> None:
    th.manual_seed(0)
    layer = STPN(INPUT, 200, recurrent=recurrent)
    presynaptic = INPUT + (200 if recurrent else 0)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "weight": (200, presynaptic),
        "bias": (200,),
        "weight_lambda": (200, presynaptic),
        "weight_gamma": (200, presynaptic),
    }
    bound = 1 / math.sqrt(200)
    for name, low, high in [
        ("weight", -bound, bound),
        ("bias", -bound, bound),
        ("weight_lambda", 0.0, 1.0),
        ("weight_gamma", -1e-3 * bound, 1e-3 * bound),
    ]:
        values = getattr(layer, name).detach()
        assert low <= values.min() and values.max() <= high, name
        # Spread over most of the interval: the init is uniform, not a constant
        assert values.max() - values.min() > 0.9 * (high - low), name


def test_variants_change_parameter_shapes() -> None:
    scalar = STPN(INPUT, HIDDEN, scalar_plasticity=True)
    assert scalar.weight_lambda.shape == () and scalar.weight_gamma.shape == ()
    plastic_bias = STPN(INPUT, HIDDEN, plastic_bias=True)
    assert plastic_bias.bias_lambda.shape == (HIDDEN,) and plastic_bias.bias_gamma.shape == (HIDDEN,)
    assert plastic_bias.state_shape == ((HIDDEN,), (HIDDEN, INPUT + HIDDEN + 1))
    gain = STPN(INPUT, HIDDEN, norm_gain=True)
    assert th.equal(gain.norm_gain.detach(), th.ones(HIDDEN))
    assert "norm_gain" not in dict(STPN(INPUT, HIDDEN).named_parameters())


def test_norm_options_have_no_effect_without_normalisation() -> None:
    th.manual_seed(0)
    plain = STPN(INPUT, HIDDEN, normalize=False)
    with_options = STPN(INPUT, HIDDEN, normalize=False, norm_time="post", norm_gain=True)
    with_options.load_state_dict({**plain.state_dict(), "norm_gain": th.full((HIDDEN,), 3.0)})
    x = th.randn(STEPS, BATCH, INPUT)
    th.testing.assert_close(with_options(x), plain(x), rtol=0, atol=0)


INVALID_OPTIONS = [
    ({"rule": "bcm"}, "Unknown plasticity rule"),
    ({"clamp": 0.0}, "clamp must be positive"),
    ({"clamp": -1.0}, "clamp must be positive"),
    ({"norm_time": "during"}, "Unknown norm_time"),
    ({"lambda_max": 0.0}, "lambda_max must be positive"),
    ({"retention_max": 0.0}, r"retention_max must lie in \(0, 1\]"),
    ({"retention_max": 1.5}, r"retention_max must lie in \(0, 1\]"),
    ({"lambda_init": (1.0, 0.5)}, r"needs low <= high, got \(1.0, 0.5\)"),
    ({"input_size": 4.5}, "input_size must be a positive integer, got 4.5"),
    ({"hidden_size": "8"}, "hidden_size must be a positive integer, got '8'"),
    ({"hidden_size": True}, "hidden_size must be a positive integer, got True"),
    ({"input_size": 0}, "input_size must be a positive integer, got 0"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    INVALID_OPTIONS,
    ids=[",".join(f"{key}={value!r}".replace(" ", "") for key, value in kwargs.items()) for kwargs, _ in INVALID_OPTIONS],
)
def test_invalid_options_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        STPN(**{"input_size": INPUT, "hidden_size": HIDDEN, **kwargs})


def test_the_layer_hands_its_one_config_to_every_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"recurrent": False, "normalize": False, "clamp": 0.4, "rule": "oja", "norm_time": "post", "lambda_max": 0.9}
    layer = STPN(INPUT, HIDDEN, **options, retention_max=0.8)
    assert layer.config == StpnConfig(**options, retention_max=0.8)
    assert (layer.recurrent, layer.lambda_max, layer.retention_max) == (False, 0.9, 0.8)
    handed = []

    def recording(*args, config: StpnConfig, **kwargs):
        handed.append(config)
        return stpn_sequence(*args, config=config, **kwargs)

    monkeypatch.setattr(stpn_module, "stpn_sequence", recording)
    for _ in range(2):
        layer(th.randn(STEPS, BATCH, INPUT))
    assert len(handed) == 2 and all(config is layer.config for config in handed)


def test_wrong_input_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="expects input of shape"):
        STPN(INPUT, HIDDEN)(th.zeros(STEPS, BATCH, INPUT + 1))


@pytest.mark.parametrize("recurrent", [True, False], ids=["stpnr", "stpnf"])
def test_output_and_state_shapes(recurrent: bool) -> None:
    layer = STPN(INPUT, HIDDEN, recurrent=recurrent)
    output, (h, fast) = layer(th.randn(STEPS, BATCH, INPUT))
    assert output.shape == (STEPS, BATCH, HIDDEN)
    assert h.shape == (BATCH, HIDDEN)
    assert fast.shape == (BATCH, HIDDEN, INPUT + (HIDDEN if recurrent else 0))
    # The carried h is the last output (for STPNf, it is all the "state" h there is)
    assert th.equal(h, output[-1])


def _strongly_plastic(**kwargs) -> STPN:
    """A layer whose F changes visibly within a few steps, so that state effects show in the outputs."""
    th.manual_seed(1)
    layer = STPN(INPUT, HIDDEN, **kwargs)
    with th.no_grad():
        layer.weight_gamma.uniform_(0.5, 1.0)
    return layer


@pytest.mark.parametrize("kwargs", [{}, {"recurrent": False}, {"plastic_bias": True, "rule": "oja"}], ids=layer_options_id)
def test_state_after_an_episode_start_equals_a_fresh_state(kwargs: dict) -> None:
    layer = _strongly_plastic(**kwargs)
    x = th.randn(2 * STEPS, BATCH, INPUT)
    starts = th.zeros(2 * STEPS, BATCH)
    reset_rows = [0, 2]
    starts[STEPS, reset_rows] = 1.0
    output, (h, fast) = layer(x, episode_starts=starts)
    fresh_output, (fresh_h, fresh_fast) = layer(x[STEPS:, reset_rows])
    th.testing.assert_close(output[STEPS:, reset_rows], fresh_output)
    th.testing.assert_close(h[reset_rows], fresh_h)
    th.testing.assert_close(fast[reset_rows], fresh_fast)
    # The rows that did not reset carry their history: their outputs differ from a fresh start
    kept_rows = [1, 3]
    _, (kept_h, _) = layer(x[STEPS:, kept_rows])
    assert not th.allclose(h[kept_rows], kept_h)


def test_carrying_the_state_across_calls_equals_one_long_call() -> None:
    layer = _strongly_plastic()
    x = th.randn(2 * STEPS, BATCH, INPUT)
    starts = (th.rand(2 * STEPS, BATCH) < 0.2).float()
    whole, whole_state = layer(x, episode_starts=starts)
    first, state = layer(x[:STEPS], episode_starts=starts[:STEPS])
    second, split_state = layer(x[STEPS:], state, starts[STEPS:])
    th.testing.assert_close(th.cat([first, second]), whole)
    th.testing.assert_close(split_state, whole_state)


def test_recording_energy_does_not_change_the_forward() -> None:
    layer = _strongly_plastic()
    x = th.randn(STEPS, BATCH, INPUT)
    plain, _ = layer(x)
    assert layer.last_energy is None
    layer.record_energy = True
    recorded, _ = layer(x)
    assert th.equal(plain, recorded)
    assert layer.last_energy.shape == (STEPS, BATCH)
    assert (layer.last_energy > 0).all()


@pytest.mark.parametrize("dtype", [th.float32, th.float64], ids=["float32", "float64"])
def test_gradients_reach_every_parameter_the_input_and_the_initial_state(dtype: th.dtype) -> None:
    layer = STPN(INPUT, HIDDEN, plastic_bias=True, norm_gain=True).to(dtype)
    x = th.randn(STEPS, BATCH, INPUT, dtype=dtype, requires_grad=True)
    h0, fast0 = layer.initial_state(BATCH)
    h0 = (0.1 * th.randn_like(h0)).requires_grad_()
    fast0 = (0.1 * th.randn_like(fast0)).requires_grad_()
    output, _ = layer(x, (h0, fast0))
    output.square().sum().backward()
    for name, tensor in [("x", x), ("h0", h0), ("F0", fast0), *layer.named_parameters()]:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name
        assert tensor.grad.dtype == dtype


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"recurrent": False, "normalize": False},
        {"clamp": 0.05, "rule": "oja", "plastic_bias": True, "scalar_plasticity": True},
        {"norm_time": "post", "norm_gain": True, "clamp": 0.5, "plastic_bias": True, "lambda_max": 0.5},
        {"retention_max": 0.3, "norm_gain": True, "plastic_bias": True},
    ],
    ids=layer_options_id,
)
def test_layer_matches_the_float64_spec(kwargs: dict) -> None:
    """The module hands its parameters and options to the kernel as the spec reads them."""
    layer = _strongly_plastic(**kwargs).double()
    if layer.norm_gain is not None:
        with th.no_grad():
            layer.norm_gain.uniform_(0.5, 2.0)
    x = th.randn(STEPS, BATCH, INPUT, dtype=th.float64)
    starts = (th.rand(STEPS, BATCH) < 0.2).double()
    h0, fast0 = (0.3 * th.randn_like(part) for part in layer.initial_state(BATCH))
    layer.record_energy = True
    output, (h, fast) = layer(x, (h0, fast0), starts)
    bias_plasticity = (layer.bias_lambda, layer.bias_gamma) if layer.plastic_bias else (None, None)
    expected = spec_sequence(
        x,
        h0,
        fast0,
        layer.weight,
        layer.bias,
        layer.weight_lambda,
        layer.weight_gamma,
        *bias_plasticity,
        layer.norm_gain,
        starts=starts,
        config=layer.config,
    )
    got = named_results((output, h, fast, layer.last_energy))
    assert_close_by_name(got, named_results(expected), rtol=1e-9, atol=1e-12)


TWIN_OPTIONS = {
    "stpnr-norm": {},
    "stpnf-nonorm-clamp1": {"recurrent": False, "normalize": False, "clamp": 1.0},
    "stpnr-post-gain-oja": {"norm_time": "post", "norm_gain": True, "rule": "oja"},
}


@pytest.mark.parametrize("kwargs", list(TWIN_OPTIONS.values()), ids=list(TWIN_OPTIONS))
def test_plasticity_free_twin_matches_the_float64_spec_with_zero_rates(kernel: str, kwargs: dict) -> None:
    """``plastic=False``: no plasticity parameters, F stays zero, and every path computes the spec with gamma = 0."""
    th.manual_seed(0)
    twin = STPN(INPUT, HIDDEN, plastic=False, **kwargs).double()
    assert {name for name, _ in twin.named_parameters()} == {"weight", "bias"} | (
        {"norm_gain"} if twin.norm_gain is not None else set()
    )
    assert not any("lambda" in key or "gamma" in key for key in twin.state_dict())
    if twin.norm_gain is not None:
        with th.no_grad():
            twin.norm_gain.uniform_(0.5, 2.0)
    x = th.randn(STEPS, BATCH, INPUT, dtype=th.float64, requires_grad=True)
    starts = (th.rand(STEPS, BATCH) < 0.2).double()
    h0 = (0.3 * th.randn(BATCH, HIDDEN, dtype=th.float64)).requires_grad_()
    fast0 = th.zeros(BATCH, *twin.state_shape[1], dtype=th.float64)
    output, (h, fast) = twin(x, (h0, fast0), starts)
    zero = th.zeros((), dtype=th.float64)
    want_output, want_h, want_fast, _ = spec_sequence(
        x, h0, fast0, twin.weight, twin.bias, zero, zero, None, None, twin.norm_gain, starts=starts, config=twin.config
    )
    assert th.equal(fast, th.zeros_like(fast))
    got = {"outputs": output, "h_T": h, "F_T": fast}
    assert_close_by_name(got, {"outputs": want_output, "h_T": want_h, "F_T": want_fast}, rtol=1e-9, atol=1e-12, label=kernel)
    # STPNf does not read h0
    leaves = {"x": x, **({"h0": h0} if twin.recurrent else {}), **dict(twin.named_parameters())}

    def grads_of(outputs: th.Tensor, last_h: th.Tensor) -> dict[str, th.Tensor]:
        loss = (outputs * th.linspace(-1, 1, HIDDEN, dtype=th.float64)).sum() + last_h.sum()
        return dict(zip(leaves, th.autograd.grad(loss, list(leaves.values())), strict=True))

    assert_close_by_name(grads_of(output, h), grads_of(want_output, want_h), rtol=1e-9, atol=1e-12, label=kernel)


def test_plastic_bias_needs_plasticity() -> None:
    with pytest.raises(ValueError, match="plastic_bias=True needs plastic=True"):
        STPN(INPUT, HIDDEN, plastic=False, plastic_bias=True)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), "0.1"])
@pytest.mark.parametrize("name", ["lambda_lr_scale", "gamma_lr_scale"])
def test_invalid_learning_rate_scales_are_rejected(name: str, scale: object) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a positive number"):
        STPN(INPUT, HIDDEN, **{name: scale})


SCALES = {"lambda0.01": (0.01, 1.0), "gamma0.01": (1.0, 0.01), "both0.1-plasticbias": (0.1, 0.1)}


@pytest.mark.parametrize(("lambda_scale", "gamma_scale"), list(SCALES.values()), ids=list(SCALES))
def test_learning_rate_scales_reparameterise_without_changing_the_model(lambda_scale: float, gamma_scale: float) -> None:
    """The layer acts with ``scale * parameter``: initialised to the paper's distribution, and the same function."""
    kwargs = {"lambda_lr_scale": lambda_scale, "gamma_lr_scale": gamma_scale, "plastic_bias": lambda_scale == gamma_scale}
    th.manual_seed(0)
    scaled = STPN(INPUT, 200, **kwargs)
    decay, rate, bias_plasticity = scaled.plasticity()
    bound = 1 / math.sqrt(200)
    for name, values, low, high in [
        ("lambda", decay, 0.0, 1.0),
        ("gamma", rate, -1e-3 * bound, 1e-3 * bound),
        *([("bias lambda", bias_plasticity[0], 0.0, 1.0)] if bias_plasticity else []),
    ]:
        assert low <= values.min() and values.max() <= high * (1 + 1e-6), name
        assert values.max() - values.min() > 0.9 * (high - low), name
    plain = STPN(INPUT, 200, plastic_bias=kwargs["plastic_bias"])
    state = scaled.state_dict()
    for key, scale in (("weight_lambda", lambda_scale), ("weight_gamma", gamma_scale), ("bias_lambda", lambda_scale),
                       ("bias_gamma", gamma_scale)):  # fmt: skip
        if key in state:
            state[key] = state[key] * scale
    plain.load_state_dict(state)
    with th.no_grad():  # strong plasticity, so that a wrong scale would show in the outputs
        scaled.weight_gamma.mul_(1e3)
        plain.weight_gamma.mul_(1e3)
    x = th.randn(STEPS, BATCH, INPUT)
    th.testing.assert_close(scaled(x), plain(x))


@pytest.mark.parametrize("scale", [0.01, 0.1])
def test_adam_trains_a_scaled_rate_at_scale_times_the_learning_rate(scale: float) -> None:
    """What the option is for: Adam's first step moves each effective lambda and gamma by ``scale * lr``."""
    th.manual_seed(0)
    layer = STPN(INPUT, HIDDEN, lambda_lr_scale=scale, gamma_lr_scale=scale).double()  # raw lambdas reach 1 / scale
    before = [value.detach().clone() for value in layer.plasticity()[:2]]
    weight_before = layer.weight.detach().clone()
    learning_rate = 1e-3
    optimizer = th.optim.Adam(layer.parameters(), lr=learning_rate, eps=1e-12)
    output, _ = layer(th.randn(STEPS, BATCH, INPUT, dtype=th.float64))
    output.square().sum().backward()
    optimizer.step()
    for name, old, new in zip(("lambda", "gamma"), before, layer.plasticity()[:2], strict=True):
        step = (new.detach() - old).abs()
        th.testing.assert_close(step.max(), th.tensor(scale * learning_rate, dtype=th.float64), rtol=1e-3, atol=0, msg=name)
    th.testing.assert_close(
        (layer.weight.detach() - weight_before).abs().max(), th.tensor(learning_rate, dtype=th.float64), rtol=1e-3, atol=0
    )


def test_plasticity_reports_the_decays_bounded_as_the_layer_acts_with_them() -> None:
    """With ``lambda_max``, the decays the diagnostics read are those the op uses: clamped, scale applied."""
    th.manual_seed(0)
    layer = STPN(INPUT, HIDDEN, lambda_max=0.5, lambda_lr_scale=0.1, plastic_bias=True)
    decay, _, (bias_decay, _) = layer.plasticity()
    stored = layer.weight_lambda.detach() * 0.1
    assert stored.max() > 0.9 and decay.max() == 0.5 and bias_decay.max() <= 0.5
    th.testing.assert_close(decay, stored.clamp(max=0.5))
    # Stored decays set to those reported act the same
    unbounded = STPN(INPUT, HIDDEN, lambda_lr_scale=0.1, plastic_bias=True)
    state = layer.state_dict()
    state["weight_lambda"], state["bias_lambda"] = decay.detach() / 0.1, bias_decay.detach() / 0.1
    unbounded.load_state_dict(state)
    x = th.randn(STEPS, BATCH, INPUT)
    th.testing.assert_close(layer(x), unbounded(x))


@pytest.mark.parametrize("kernel", ["reference", "cpp"], indirect=True)
def test_retention_max_keeps_at_most_that_share_of_f_per_step(kernel: str) -> None:
    """Without the Hebbian term: the paper's normalised ``F`` grows wherever ``lambda`` exceeds the row norm (about 0.7
    here), while with ``retention_max`` every synapse keeps at most that share of itself, per step and sample, and
    those whose ``lambda / n`` is below it keep that."""
    th.manual_seed(0)
    layers = {bound: STPN(INPUT, HIDDEN, retention_max=bound) for bound in (None, 0.8)}
    layers[0.8].load_state_dict(layers[None].state_dict())
    with th.no_grad():
        layers[None].weight_gamma.zero_()
        layers[0.8].weight_gamma.zero_()
    x = th.randn(STEPS, BATCH, INPUT)
    with th.no_grad():
        for bound, layer in layers.items():
            fast = 0.01 * th.randn(BATCH, HIDDEN, INPUT + HIDDEN)
            for step in range(STEPS):
                _, (_, new_fast) = layer(x[step : step + 1], (th.zeros(BATCH, HIDDEN), fast))
                kept = new_fast.abs() / fast.abs()
                if bound is None:
                    assert kept.max() > 1.2, step
                else:
                    assert kept.max() <= bound * (1 + 1e-6) and kept.min() < 0.5 * bound, step
                fast = new_fast


def test_divergence_from_nan_parameters_blames_them_not_the_decays() -> None:
    """A NaN loss puts NaN in the weights, and F follows: the advice on clamp/lambda_max would not apply."""
    layer = STPN(3, 4)
    with th.no_grad():
        layer.weight[0, 0] = math.nan
    with pytest.raises(DivergedStateError, match=r"its own parameters weight are inf or NaN, so F is too: a NaN or inf loss"):
        layer(th.ones(2, 1, 3))
