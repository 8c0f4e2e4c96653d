"""Every path of ``stpn_sequence`` against the float64 re-statement of the op's README.md in ``spec.py``."""

import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch as th
from torch.autograd.gradcheck import GradcheckError

from sb3_stpn.common.stpn import STPN
from sb3_stpn.ops.stpn import KERNEL_ENV, DivergedStateError, StpnConfig, dispatch, fused_cpp
from tests.ops.stpn.spec import (
    HIDDEN,
    STEPS,
    assert_close_by_name,
    assert_several_segments,
    make_problem,
    named_results,
    options_id,
    results_and_grads,
    run_path,
    spec_sequence,
)

# Every combination of the options; norm_time and norm_gain only where they act (with normalize),
# scalar plasticity with the default norm options only (it changes the parameters' shapes, nothing else)
CONFIGS = [
    (
        StpnConfig(recurrent=recurrent, normalize=normalize, clamp=clamp, rule=rule, norm_time=norm_time),
        plastic_bias,
        scalar,
        norm_gain,
        HIDDEN,
    )
    for recurrent, normalize, clamp, rule, plastic_bias, scalar, norm_time, norm_gain in itertools.product(
        (True, False),
        (True, False),
        (None, 0.4),
        ("hebbian", "oja"),
        (False, True),
        (False, True),
        ("pre", "post"),
        (False, True),
    )
    if (normalize or (norm_time, norm_gain) == ("pre", False)) and (not scalar or (norm_time, norm_gain) == ("pre", False))
]
# lambda_max, with lambdas drawn from N(0, 1): about a third of them bounded
LAMBDA_MAX_CONFIGS = [
    (StpnConfig(lambda_max=0.5), True, False, False, HIDDEN),
    (StpnConfig(lambda_max=0.5, normalize=False, recurrent=False), True, True, False, HIDDEN),
    (StpnConfig(lambda_max=0.5, norm_time="post", clamp=0.4, rule="oja"), True, False, True, HIDDEN),
]
# retention_max at 0.5: relative to the norm with "pre" (rows of norm ~1.5, so that a fifth of the N(0, 1) lambdas
# are bound, per sample and step), a fixed bound for "post", without normalisation and for a plastic bias
RETENTION_CONFIGS = [
    (StpnConfig(retention_max=0.5), True, False, False, HIDDEN),
    (StpnConfig(retention_max=0.5, clamp=0.4, rule="oja", recurrent=False), True, False, True, HIDDEN),
    (StpnConfig(retention_max=0.5, lambda_max=0.3), False, True, False, HIDDEN),
    (StpnConfig(retention_max=0.5, norm_time="post"), True, False, False, HIDDEN),
    (StpnConfig(retention_max=0.5, normalize=False), True, False, False, HIDDEN),
    (StpnConfig(retention_max=0.5, rule="oja"), False, False, True, 20),
]
# More neurons than the C++ kernel's block of 16: whole blocks and a partial one
WIDE_CONFIGS = [
    (StpnConfig(), False, False, False, 20),
    (StpnConfig(norm_time="post", clamp=0.4), True, False, True, 20),
    (StpnConfig(norm_time="post", rule="oja", recurrent=False), True, False, True, 37),
    (StpnConfig(clamp=0.4, rule="oja"), True, False, True, 20),
]


def case(config: StpnConfig, plastic_bias: bool, scalar: bool, norm_gain: bool, hidden: int):
    """One case of test_matches_spec_float64 with a readable id (``oja-postnorm-clamp0.4-plasticbias-gain-H20``)."""
    flags = {"plastic_bias": plastic_bias, "scalar": scalar, "norm_gain": norm_gain, "hidden": hidden}
    return pytest.param(config, plastic_bias, scalar, norm_gain, hidden, id=options_id(config, **flags))


@pytest.mark.parametrize(
    ("config", "plastic_bias", "scalar", "norm_gain", "hidden"),
    [case(*options) for options in CONFIGS + LAMBDA_MAX_CONFIGS + RETENTION_CONFIGS + WIDE_CONFIGS],
)
def test_matches_spec_float64(
    kernel: str,
    backward_segments: list[tuple[int, int]],
    config: StpnConfig,
    plastic_bias: bool,
    scalar: bool,
    norm_gain: bool,
    hidden: int,
) -> None:
    tensors, starts = make_problem(config, plastic_bias, scalar, norm_gain, hidden=hidden)
    expected = results_and_grads(spec_sequence(*tensors.values(), config=config, starts=starts), tensors)
    got = results_and_grads(run_path(tensors, starts, config), tensors)
    assert_close_by_name(got, expected, rtol=1e-9, atol=1e-10, label=kernel)
    if kernel != "reference":
        assert_several_segments(backward_segments, STEPS)


@pytest.mark.parametrize(
    ("config", "norm_gain", "plastic_bias"),
    [
        pytest.param(config, norm_gain, plastic_bias, id=options_id(config, norm_gain=norm_gain, plastic_bias=plastic_bias))
        for config, norm_gain, plastic_bias in [
            *(
                (config, False, plastic_bias)
                for config, plastic_bias in itertools.product(
                    [StpnConfig(), StpnConfig(rule="oja", recurrent=False), StpnConfig(normalize=False, rule="oja")],
                    [False, True],
                )
            ),
            (StpnConfig(norm_time="post", clamp=0.4), True, True),
            (StpnConfig(norm_time="post", rule="oja", recurrent=False), True, False),
            (StpnConfig(retention_max=0.5), True, True),
            (StpnConfig(retention_max=0.5, rule="oja", clamp=0.4), False, False),
        ]
    ],
)
def test_gradcheck_fused(
    kernel: str, backward_segments: list[tuple[int, int]], config: StpnConfig, norm_gain: bool, plastic_bias: bool
) -> None:
    if kernel == "reference":
        pytest.skip("gradcheck targets the hand-derived backward of the fused paths")
    tensors, starts = make_problem(config, plastic_bias, scalar=False, norm_gain=norm_gain)
    names = [k for k, v in tensors.items() if v is not None]

    def function(*leaves: th.Tensor) -> tuple[th.Tensor, ...]:
        out, h, fast, _ = run_path({**tensors, **dict(zip(names, leaves, strict=True))}, starts, config)
        return out, h, fast

    try:
        assert th.autograd.gradcheck(function, [tensors[k] for k in names], eps=1e-6, atol=1e-6)
    except GradcheckError as error:  # it numbers the inputs and outputs: name them
        inputs = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
        raise AssertionError(f"{kernel}: {error}\ninputs {inputs}; outputs 0: outputs, 1: h_T, 2: F_T") from error
    assert_several_segments(backward_segments, STEPS)


@pytest.mark.parametrize(
    "config",
    [StpnConfig(clamp=0.4, rule="oja"), StpnConfig(recurrent=False), StpnConfig(norm_time="post", clamp=0.4)],
    ids=lambda config: options_id(config, plastic_bias=True, norm_gain=config.norm_time == "post"),
)
def test_float32_close_to_float64(kernel: str, backward_segments: list[tuple[int, int]], config: StpnConfig) -> None:
    tensors64, starts = make_problem(config, plastic_bias=True, scalar=False, norm_gain=config.norm_time == "post")
    tensors32 = {k: None if v is None else v.detach().float().requires_grad_() for k, v in tensors64.items()}
    expected = results_and_grads(spec_sequence(*tensors64.values(), config=config, starts=starts), tensors64)
    got = results_and_grads(run_path(tensors32, starts.float(), config), tensors32)
    assert_close_by_name(got, expected, rtol=1e-4, atol=1e-5, label=kernel, dtype=th.float32)
    if kernel != "reference":
        assert_several_segments(backward_segments, STEPS)


@pytest.mark.parametrize(
    ("config", "norm_gain", "hidden"),
    [
        pytest.param(config, norm_gain, hidden, id=options_id(config, plastic_bias=True, norm_gain=norm_gain, hidden=hidden))
        for config, norm_gain, hidden in [
            (StpnConfig(clamp=0.4), False, HIDDEN),
            (StpnConfig(clamp=0.4, norm_time="post"), True, HIDDEN),
            (StpnConfig(norm_time="post", rule="oja"), False, 20),
            (StpnConfig(rule="oja"), True, 20),
            (StpnConfig(retention_max=0.5, clamp=0.4), True, 20),
        ]
    ],
)
def test_inference_without_grad_matches(kernel: str, config: StpnConfig, norm_gain: bool, hidden: int) -> None:
    """Rollouts run under no_grad, T=1, without checkpoints."""
    tensors, starts = make_problem(config, plastic_bias=True, scalar=False, norm_gain=norm_gain, hidden=hidden)
    expected = named_results(tuple(t.detach() for t in spec_sequence(*tensors.values(), config=config, starts=starts)))
    with th.no_grad():
        got = named_results(run_path(tensors, starts, config))
        first = named_results(run_path({**tensors, "x": tensors["x"][:1]}, starts[:1], config))
    assert_close_by_name(got, expected, rtol=1e-9, atol=1e-10, label=kernel)
    th.testing.assert_close(first["outputs"][0], expected["outputs"][0], rtol=1e-9, atol=1e-10)


def test_fallback_when_the_build_fails(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken_build() -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setattr(fused_cpp, "_build_cpp_extension", broken_build)
    fused_cpp._cpp_ops.cache_clear()
    try:
        monkeypatch.setenv(KERNEL_ENV, "auto")
        x = th.zeros(2, 1, 3)
        with caplog.at_level(logging.WARNING, logger=fused_cpp.__name__):
            assert dispatch.kernel_choice(x) == "torch"
            assert dispatch.kernel_choice(x) == "torch"
        warnings = [r for r in caplog.records if "C++ STPN kernel is unavailable" in r.getMessage()]
        assert len(warnings) == 1
        config = StpnConfig()
        tensors, starts = make_problem(config, plastic_bias=False, scalar=False)
        expected = spec_sequence(*tensors.values(), config=config, starts=starts)
        th.testing.assert_close(run_path(tensors, starts, config)[0], expected[0])
        monkeypatch.setenv(KERNEL_ENV, "cpp")
        with pytest.raises(RuntimeError, match="could not be built"):
            dispatch.kernel_choice(x)
    finally:
        monkeypatch.undo()
        fused_cpp._cpp_ops.cache_clear()


def test_auto_and_bad_choice(monkeypatch: pytest.MonkeyPatch, cpp_available: bool) -> None:
    monkeypatch.setenv(KERNEL_ENV, "auto")
    assert dispatch.kernel_choice(th.zeros(1, 1, 1)) == ("cpp" if cpp_available else "torch")
    assert dispatch.kernel_choice(th.zeros(1, 1, 1, dtype=th.float16)) == "torch"
    monkeypatch.setenv(KERNEL_ENV, "cuda")
    with pytest.raises(ValueError, match=KERNEL_ENV):
        dispatch.kernel_choice(th.zeros(1, 1, 1))


def test_checkpoint_interval() -> None:
    assert dispatch.checkpoint_interval(32, 1) == 32
    assert dispatch.checkpoint_interval(32, dispatch.SEGMENT_BUDGET_BYTES) == 6
    assert dispatch.checkpoint_interval(1, 10**12) == 1


def _bad_inputs() -> dict[str, tuple[Callable[[], object], str]]:
    """Calls of a layer (I=4, H=8, K=12) with one bad input each, and a part of the error they must raise."""
    layer = STPN(4, 8)
    x, h, fast = th.randn(3, 5, 4), th.zeros(5, 8), th.zeros(5, 8, 12)
    return {
        "F with K=3": (lambda: layer(x, (h, th.zeros(5, 8, 3))), "F must have shape (5, 8, 12), got (5, 8, 3)"),
        "F with K=11": (lambda: layer(x, (h, th.zeros(5, 8, 11))), "got (5, 8, 11)"),
        "F with K=100": (lambda: layer(x, (h, th.zeros(5, 8, 100))), "got (5, 8, 100)"),
        "h with H=7": (lambda: layer(x, (th.zeros(5, 7), fast)), "h must have shape (5, 8), got (5, 7)"),
        "state of another batch": (lambda: layer(x, (th.zeros(4, 8), th.zeros(4, 8, 12))), "(5, 8), got (4, 8)"),
        "F of another batch than h": (lambda: layer(x, (h, th.zeros(4, 8, 12))), "(5, 8, 12), got (4, 8, 12)"),
        "LSTM-style state": (lambda: layer(x, (h[None], fast[None])), "(5, 8), got (1, 5, 8): drop the leading"),
        "episode_starts too short": (lambda: layer(x, (h, fast), th.zeros(2, 5)), "(3, 5), got (2, 5)"),
        "episode_starts of another batch": (lambda: layer(x, (h, fast), th.zeros(3, 4)), "(3, 5), got (3, 4)"),
        "T=0": (lambda: layer(th.zeros(0, 5, 4)), "(0, 5, 4) is empty"),
        "B=0": (lambda: layer(th.zeros(3, 0, 4)), "(3, 0, 4) is empty"),
        "float64 x, float32 layer": (lambda: layer(x.double(), (h, fast)), "x is torch.float64 on cpu but the layer"),
        "float64 state": (lambda: layer(x, (h, fast.double())), "F is torch.float64 on cpu but the layer"),
        "x on another device": (lambda: layer(x.to("meta"), (h, fast)), "x is torch.float32 on meta"),
    }


def _bad_native_calls() -> dict[str, tuple[Callable[[], object], str]]:
    """Direct calls of the C++ ops (bypassing stpn_sequence's checks) with one bad input each."""
    layer = STPN(4, 8)
    x, h, fast = th.randn(3, 5, 4), th.zeros(5, 8), th.zeros(5, 8, 12)
    params = (layer.weight, layer.bias, layer.weight_lambda, layer.weight_gamma, None, None, None)
    flags = fused_cpp._cpp_flags(StpnConfig())

    def forward(x=x, h=h, fast=fast, starts=None, params=params):
        return fused_cpp._cpp_ops().forward(x, h, fast, starts, *params, *flags, False, 2)

    def backward(keep_checkpoints: int = 2, d_fast_batch: int = 5):
        (outputs, _, _, checkpoints), _ = forward()
        return fused_cpp._cpp_ops().backward(
            x, h, None, checkpoints[:keep_checkpoints], outputs, *params, *flags, 2, outputs, fast[:d_fast_batch]
        )

    return {
        "forward, F with K=3": (lambda: forward(fast=th.zeros(5, 8, 3)), "fast0 must have shape [5, 8, 12]"),
        "forward, h with H=7": (lambda: forward(h=th.zeros(5, 7)), "h0 must have shape [5, 8]"),
        "forward, T=0": (lambda: forward(x=x[:0]), "at least one step and one sample, got [0, 5, 4]"),
        "forward, starts too short": (lambda: forward(starts=th.zeros(2, 5)), "episode starts must have shape [3, 5]"),
        "forward, float64 x": (lambda: forward(x=x.double()), "weight must be Double like x, got Float"),
        "forward, lambda of another size": (
            lambda: forward(params=(params[0], params[1], params[2][:, :5], *params[3:])),
            "weight_lambda must have shape [8, 12]",
        ),
        "backward, too few checkpoints": (lambda: backward(keep_checkpoints=1), "checkpoints must have shape"),
        "backward, dF of another batch": (lambda: backward(d_fast_batch=2), "gradient of F must have shape"),
    }


def report_bad_inputs() -> None:
    """Run by test_bad_inputs_raise_a_clear_error in a child process: one JSON line per case, as it ends."""
    cases = _bad_inputs()
    if os.environ[KERNEL_ENV] == "cpp":
        cases |= _bad_native_calls()
    for name, (call, _) in cases.items():
        try:
            call()
            outcome = ["no error", ""]
        except Exception as error:  # the test compares the type and message
            outcome = [type(error).__name__, str(error)]
        print(json.dumps([name, *outcome]), flush=True)


@pytest.fixture(scope="module")
def bad_input_outcomes() -> Callable[[str], tuple[dict[str, list[str]], str]]:
    """The outcome of every bad-input case on a path, from one child process per path (a crash ends only it)."""
    cache = {}

    def outcomes(kernel: str) -> tuple[dict[str, list[str]], str]:
        if kernel not in cache:
            child = subprocess.run(
                [sys.executable, "-c", "from tests.ops.stpn.test_dispatch import report_bad_inputs; report_bad_inputs()"],
                env={**os.environ, KERNEL_ENV: kernel},
                cwd=Path(__file__).resolve().parents[3],
                capture_output=True,
                text=True,
                timeout=300,
            )
            results = {name: [kind, message] for name, kind, message in map(json.loads, child.stdout.splitlines())}
            cache[kernel] = results, f"the child exited with {child.returncode}: {child.stderr[-1500:]}"
        return cache[kernel]

    return outcomes


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_inputs_raise_a_clear_error(kernel: str, case: str, bad_input_outcomes: Callable) -> None:
    results, exit_report = bad_input_outcomes(kernel)
    assert case in results, f"{kernel}: no outcome for {case!r}, {exit_report}"
    kind, message = results[case]
    assert kind == "ValueError", f"{kernel} {case}: {kind} {message}"
    assert _bad_inputs()[case][1] in message


@pytest.mark.parametrize("case", list(_bad_native_calls()))
def test_native_entry_points_check_every_input(case: str, bad_input_outcomes: Callable, cpp_available: bool) -> None:
    if not cpp_available:
        pytest.skip("the C++ kernel could not be built here (no compiler?)")
    results, exit_report = bad_input_outcomes("cpp")
    assert case in results, f"no outcome for {case!r}, {exit_report}"
    kind, message = results[case]
    assert kind == "RuntimeError", f"{case}: {kind} {message}"
    assert _bad_native_calls()[case][1] in message


def _diverging_layer(case: str, **bound: float) -> STPN:
    """A float32 layer whose F grows by 1.5x per step: in the plastic bias column, or everywhere without normalisation.
    ``bound``: a bound on the decays (``lambda_max`` or ``retention_max``)."""
    th.manual_seed(0)
    if case == "plastic bias":
        layer = STPN(4, 8, plastic_bias=True, **bound)
        with th.no_grad():
            layer.bias_lambda.fill_(1.5)
            layer.bias_gamma.fill_(0.5)
    else:
        layer = STPN(4, 8, normalize=False, **bound)
        with th.no_grad():
            layer.weight_lambda.fill_(1.5)
            layer.weight_gamma.fill_(0.5)
    return layer


@pytest.mark.parametrize("case", ["plastic bias", "normalize=False"])
@pytest.mark.parametrize("rollout", [True, False], ids=["rollout", "training"])
def test_diverging_state_raises_a_clear_error(kernel: str, case: str, rollout: bool) -> None:
    """Rollouts (T=1, no grad) and training (one call of T steps) stop with one error, not garbage outputs."""
    layer, x = _diverging_layer(case), th.randn(400, 2, 4)
    error = r"STPN\(4, 8, .*: the fast weights F became inf or NaN.*lambda_max=1.0 or retention_max=0.95"
    with pytest.raises(DivergedStateError, match=error):
        if rollout:
            state = None
            with th.no_grad():
                for step in range(x.shape[0]):
                    _, state = layer(x[step : step + 1], state)
        else:
            layer(x)[0].sum().backward()
    # float32 overflows after about 220 steps of growth by 1.5
    assert not rollout or step > 150
    # Either bound the error names keeps the same layer finite
    for bound in (dict(lambda_max=1.0), dict(retention_max=0.95)):
        outputs, (_, fast) = _diverging_layer(case, **bound)(x)
        assert th.isfinite(outputs).all() and th.isfinite(fast).all()


@pytest.mark.parametrize("fault", ["raises", "disagrees"])
def test_auto_checks_triton_before_trusting_it_and_falls_back_to_torch(
    fault: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where auto picks Triton (CUDA), a first check on a small problem of the layer's configuration compares it with the
    torch path; a Triton path that fails or disagrees is named in one warning and torch serves that configuration."""
    launches = []

    class BrokenTriton:
        PER_BATCH_SEGMENT = False

        @staticmethod
        def forward(*args: object, **kwargs: object) -> tuple:
            launches.append(1)
            if fault == "raises":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            outputs, fast, energy, checkpoints = dispatch.fused_torch.forward(*args, **kwargs)
            return outputs + 1e-3, fast, energy, checkpoints

        backward = staticmethod(dispatch.fused_torch.backward)

    backend = dispatch._backend
    monkeypatch.setattr(dispatch, "_backend", lambda choice: BrokenTriton if choice == "triton" else backend(choice))
    monkeypatch.setattr(dispatch, "kernel_choice", lambda x: "triton")  # as auto chooses on a CUDA tensor
    monkeypatch.setenv(KERNEL_ENV, "auto")
    dispatch._triton_agrees_on.cache_clear()
    config = StpnConfig(norm_time="post")
    tensors, starts = make_problem(config, plastic_bias=True, scalar=False, norm_gain=True)
    try:
        with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
            first, again = run_path(tensors, starts, config), run_path(tensors, starts, config)
    finally:
        dispatch._triton_agrees_on.cache_clear()
    (warning,) = [r.getMessage() for r in caplog.records if "failed its check against the torch path" in r.getMessage()]
    assert ("illegal memory access" if fault == "raises" else "outputs: Tensor-likes are not close") in warning
    assert len(launches) == 1  # the check only: both runs took the torch path, and the check ran once
    expected = spec_sequence(*tensors.values(), config=config, starts=starts)
    for result in (first, again):
        assert_close_by_name(named_results(result), named_results(expected), rtol=1e-9, atol=1e-10)
