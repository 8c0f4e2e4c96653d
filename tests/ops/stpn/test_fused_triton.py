"""The ``triton`` path of ``stpn_sequence`` against the float64 reference loop: values and every gradient.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (about a second a case, hence the
small sizes); with CUDA (``benchmarks/gpu_check.sh``) they are compiled and run on the GPU.
"""

import itertools
import logging
import os
import subprocess
import sys
import types

import pytest
import torch as th

import sb3_stpn.ops.stpn

CUDA = th.cuda.is_available()
if not CUDA:
    # Triton takes its interpreter for kernels defined while this is set: before stpn_triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from sb3_stpn.common.stpn import STPN  # noqa: E402
from sb3_stpn.ops.stpn import KERNEL_ENV, DivergedStateError, StpnConfig, dispatch, kernel_choice  # noqa: E402
from sb3_stpn.ops.stpn import fused_triton as stpn_triton  # noqa: E402
from tests.ops.stpn.spec import assert_close_by_name, layer_options_id, named_results, spy_on_backward  # noqa: E402

DEVICE = th.device("cuda" if CUDA else "cpu")
STEPS, BATCH, INPUTS, HIDDEN = 6, 2, 3, 5
# Step 3 starts the second checkpoint segment (segments of ceil(sqrt(6)) = 3 steps)
RESETS = [(2, 0), (3, 1), (5, 0)]
DEFAULT_BUDGET = dispatch.SEGMENT_BUDGET_BYTES
# retention_max in these layers binds at 19-36% of (step, sample, synapse), lambda >= rho * n_t, depending on the
# options; half the lambdas (N(0, 0.5)) are negative and never bound
RHO = 0.3


@pytest.fixture(autouse=True)
def several_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backward recomputes several checkpoint segments, as at real sequence lengths."""
    monkeypatch.setattr(dispatch, "SEGMENT_BUDGET_BYTES", 1)


@pytest.fixture
def column_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass over F walks several chunks of columns (STPNr: K = 8 in chunks of 4, split inside h), as at real sizes."""
    monkeypatch.setattr(stpn_triton, "TILE_ELEMENTS", 32)


def make_case(dtype: th.dtype = th.float64, **stpn_kwargs) -> tuple[STPN, list[th.Tensor], th.Tensor]:
    """
    An STPN layer with parameters drawn wide (plasticity strong enough for the clamp and Oja's trace to
    act), inputs, a nonzero start state and resets inside the sequence.
    """
    generator = th.Generator().manual_seed(0)
    layer = STPN(INPUTS, HIDDEN, **stpn_kwargs)
    with th.no_grad():
        for name, parameter in layer.named_parameters():
            # Gains around 1, as initialised (a gain near 0 would blow the drive up)
            center = 1.0 if name == "norm_gain" else 0.0
            parameter.copy_(center + 0.5 * th.randn(parameter.shape, generator=generator, dtype=th.float64))
    h_shape, f_shape = layer.state_shape
    shapes = [(STEPS, BATCH, INPUTS), (BATCH, *h_shape), (BATCH, *f_shape)]
    inputs = [0.5 * th.randn(shape, generator=generator, dtype=th.float64).to(DEVICE, dtype) for shape in shapes]
    starts = th.zeros(STEPS, BATCH, device=DEVICE)
    for step, sample in RESETS:
        starts[step, sample] = 1
    return layer.to(DEVICE, dtype), inputs, starts


def results_and_grads(
    kernel: str, layer: STPN, inputs: list[th.Tensor], starts: th.Tensor, monkeypatch: pytest.MonkeyPatch
) -> dict[str, th.Tensor]:
    """The layer's outputs on ``kernel``, and the gradients of a random loss on them w.r.t. every input and parameter."""
    monkeypatch.setenv(KERNEL_ENV, kernel)
    x, h0, fast0 = (tensor.detach().requires_grad_() for tensor in inputs)
    layer.record_energy = True
    outputs, (h, fast) = layer(x, (h0, fast0), starts)
    results = {"outputs": outputs, "h_T": h, "F_T": fast, "energy": layer.last_energy}
    generator = th.Generator().manual_seed(1)
    loss = sum((t * th.randn(t.shape, generator=generator, dtype=th.float64).to(t)).sum() for t in (outputs, h, fast))
    leaves = {"x": x, "h0": h0, "fast0": fast0, **dict(layer.named_parameters())}
    grads = th.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return results | {f"grad {name}": grad for name, grad in zip(leaves, grads, strict=True)}


def assert_matches_reference(
    monkeypatch: pytest.MonkeyPatch,
    dtype: th.dtype = th.float64,
    rtol: float = 1e-9,
    atol: float = 1e-10,
    segments: int = 2,
    **stpn_kwargs,
) -> None:
    """The triton path's results and gradients against the reference's, its one backward over ``segments`` segments."""
    layer, inputs, starts = make_case(dtype, **stpn_kwargs)
    backward_segments = spy_on_backward(monkeypatch, stpn_triton)
    got = results_and_grads("triton", layer, inputs, starts, monkeypatch)
    assert [count for _, count in backward_segments] == [segments], f"(every, checkpoints): {backward_segments}"
    # In place: the same layer in float64
    expected = results_and_grads("reference", layer.double(), [t.double() for t in inputs], starts, monkeypatch)
    assert_close_by_name(got, expected, rtol=rtol, atol=atol, dtype=dtype)


VARIANTS = list(itertools.product((True, False), (True, False), (None, 0.4), ("hebbian", "oja"), (False, True)))
OPTION_NAMES = ("recurrent", "normalize", "clamp", "rule", "plastic_bias")


@pytest.mark.parametrize(
    OPTION_NAMES,
    [pytest.param(*values, id=layer_options_id(dict(zip(OPTION_NAMES, values, strict=True)))) for values in VARIANTS],
)
def test_matches_reference_float64(
    monkeypatch: pytest.MonkeyPatch, recurrent: bool, normalize: bool, clamp: float | None, rule: str, plastic_bias: bool
) -> None:
    assert_matches_reference(
        monkeypatch, recurrent=recurrent, normalize=normalize, clamp=clamp, rule=rule, plastic_bias=plastic_bias
    )


@pytest.mark.usefixtures("column_chunks")
@pytest.mark.parametrize(
    "options",
    [
        {"rule": "oja", "clamp": 0.4, "plastic_bias": True},
        {"normalize": False},
        {"rule": "oja", "normalize": False},
        {"norm_time": "post", "norm_gain": True, "rule": "oja"},
        {"retention_max": RHO, "rule": "oja", "norm_gain": True},
    ],
    ids=layer_options_id,
)
def test_column_chunks(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    assert_matches_reference(monkeypatch, **options)


@pytest.mark.parametrize(
    "options",
    [{"rule": "oja", "clamp": 0.4, "plastic_bias": True}, {"recurrent": False}, {"normalize": False, "clamp": 0.4}],
    ids=lambda options: layer_options_id({**options, "norm_gain": True}),
)
def test_norm_gain(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    assert_matches_reference(monkeypatch, norm_gain=True, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"rule": "oja", "clamp": 0.4, "plastic_bias": True},
        {"recurrent": False, "norm_gain": True},
        {"clamp": 0.4, "norm_gain": True},
    ],
    ids=lambda options: layer_options_id({**options, "norm_time": "post"}),
)
def test_post_update_normalisation(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    """norm_time="post": the new F divided by its own norm (one more pass forward and backward)."""
    assert_matches_reference(monkeypatch, norm_time="post", **options)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rule": "oja", "clamp": 0.4, "plastic_bias": True},
        {"norm_gain": True, "clamp": 0.4},
        {"recurrent": False, "rule": "oja"},
    ],
    ids=lambda options: layer_options_id({**options, "retention_max": RHO}),
)
def test_retention_max(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    """retention_max relative to the norm: the decays act at most rho * n_t, with no gradient where that binds."""
    assert_matches_reference(monkeypatch, retention_max=RHO, **options)


@pytest.mark.usefixtures("column_chunks")
@pytest.mark.parametrize(
    "options",
    [{"plastic_bias": True, "clamp": 0.4}, {"recurrent": False, "rule": "oja", "normalize": False}],
    ids=lambda options: layer_options_id({**options, "scalar_plasticity": True}),
)
def test_scalar_plasticity(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    assert_matches_reference(monkeypatch, scalar_plasticity=True, **options)


@pytest.mark.usefixtures("column_chunks")
@pytest.mark.parametrize(
    "options",
    [
        {"clamp": 0.4, "rule": "oja", "plastic_bias": True},
        {"recurrent": False, "norm_time": "post", "norm_gain": True},
        {"retention_max": RHO, "rule": "oja"},
    ],
    ids=layer_options_id,
)
def test_float32_close_to_float64(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    assert_matches_reference(monkeypatch, th.float32, rtol=1e-4, atol=1e-5, **options)


def test_one_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default budget: the whole sequence is one segment (only F_0 kept)."""
    monkeypatch.setattr(dispatch, "SEGMENT_BUDGET_BYTES", DEFAULT_BUDGET)
    assert_matches_reference(monkeypatch, segments=1, clamp=0.4, rule="oja", plastic_bias=True)


@pytest.mark.parametrize(
    "options",
    [{}, {"norm_time": "post"}, {"retention_max": RHO}],
    ids=lambda options: layer_options_id({**options, "clamp": 0.4, "plastic_bias": True}),
)
def test_inference_without_grad(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    """Rollouts: no graph, no checkpoints; a whole sequence with resets, and one step."""
    layer, (x, h0, fast0), starts = make_case(clamp=0.4, plastic_bias=True, **options)
    layer.record_energy = True
    for steps in (STEPS, 1):
        results = {}
        for kernel in ("triton", "reference"):
            monkeypatch.setenv(KERNEL_ENV, kernel)
            with th.no_grad():
                outputs, (h, fast) = layer(x[:steps], (h0, fast0), starts[:steps])
            results[kernel] = named_results((outputs, h, fast, layer.last_energy))
        assert_close_by_name(results["triton"], results["reference"], rtol=1e-9, atol=1e-10, label=f"T={steps}")


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
def test_diverging_state_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch, grad: bool) -> None:
    """A plastic bias growing 1e10-fold a step overflows float32 within a few steps: one clear error."""
    monkeypatch.setenv(KERNEL_ENV, "triton")
    layer = STPN(INPUTS, HIDDEN, plastic_bias=True).to(DEVICE)
    with th.no_grad():
        layer.bias_lambda.fill_(1e10)
        layer.bias_gamma.fill_(1.0)
    with th.set_grad_enabled(grad), pytest.raises(DivergedStateError, match="F became inf or NaN"):
        layer(th.randn(STEPS, BATCH, INPUTS, device=DEVICE))


def test_choice_of_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KERNEL_ENV, "triton")
    assert kernel_choice(th.zeros(1, 1, 1, device=DEVICE)) == "triton"
    with pytest.raises(ValueError, match="float32/float64 CUDA tensors"):
        kernel_choice(th.zeros(1, 1, 1, dtype=th.float16, device=DEVICE))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernel_choice(th.zeros(1, 1, 1))
    monkeypatch.setenv(KERNEL_ENV, "auto")
    # kernel_choice reads only the device and dtype: a stand-in for a CUDA tensor where there is no GPU
    assert kernel_choice(types.SimpleNamespace(device=th.device("cuda"), dtype=th.float32)) == "triton"
    assert kernel_choice(types.SimpleNamespace(device=th.device("cuda"), dtype=th.bfloat16)) == "torch"
    # CPU tensors are the C++ kernel's or the torch path's (here without the C++ build), even under the interpreter
    monkeypatch.setattr(dispatch, "_cpp_ops", lambda: None)
    assert kernel_choice(th.zeros(1, 1, 1)) == "torch"


def test_fallback_when_triton_does_not_import(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delattr(sb3_stpn.ops.stpn, "fused_triton")
    monkeypatch.setitem(sys.modules, "sb3_stpn.ops.stpn.fused_triton", None)
    dispatch._triton_ops.cache_clear()
    try:
        monkeypatch.setenv(KERNEL_ENV, "auto")
        cuda_tensor = types.SimpleNamespace(device=th.device("cuda"), dtype=th.float32)
        with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
            assert kernel_choice(cuda_tensor) == "torch"
            assert kernel_choice(cuda_tensor) == "torch"
        assert len([r for r in caplog.records if "Triton STPN kernel is unavailable" in r.getMessage()]) == 1
        monkeypatch.setenv(KERNEL_ENV, "triton")
        with pytest.raises(RuntimeError, match="pip install triton"):
            kernel_choice(cuda_tensor)
    finally:
        monkeypatch.undo()
        dispatch._triton_ops.cache_clear()


# Compiles both kernels with every option on, as on a GPU: float32, H=64 in tiles of 16 columns on 8 warps; POST and
# RETAIN (retention_max relative to the norm) in turn, as they never combine
COMPILE_FOR_SM90 = """
from triton import compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sb3_stpn.ops.stpn import fused_triton as kernels

for post in (True, False):
    flags = dict(RECURRENT=True, NORMALIZE=True, OJA=True, PLASTIC=True, CLAMP=True, GAIN=True, POST=post, RETAIN=not post)
    flags.update(BLOCK_H=64, BLOCK_K=16)
    forward = (kernels._forward_kernel, dict(flags, ENERGY=True, CHECKPOINT=True))
    for kernel, constexprs in [forward, (kernels._backward_kernel, flags)]:
        names = kernel.arg_names
        signature = {n: "constexpr" if n in constexprs else "i32" if n in kernels._SIZES else "*fp32" for n in names}
        source = ASTSource(kernel, signature, constexprs)
        assert compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8}).asm["cubin"]
"""


@pytest.mark.skipif(CUDA, reason="a GPU runs the compiled kernels in the tests above")
def test_compiles_for_a_gpu() -> None:
    """The interpreter skips Triton's code generation: compile for sm_90 (no GPU needed), in a process without it."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_SM90], env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_auto_check_of_triton_passes() -> None:
    """The check auto runs before it trusts Triton, on the real kernels (in the interpreter without CUDA, as in CI)."""
    device = "cuda" if CUDA else "cpu"
    dispatch._triton_agrees_on.cache_clear()
    try:
        assert dispatch._triton_agrees_on(device, th.float32, StpnConfig(lambda_max=0.5), (False, False))
        assert dispatch._triton_agrees_on(device, th.float64, StpnConfig(recurrent=False, clamp=0.4), (True, True))
        # Its problem's rows have norms of about 1.8 and lambdas U(0, 1): rho binds at about half the synapses
        assert dispatch._triton_agrees_on(device, th.float32, StpnConfig(retention_max=RHO, rule="oja"), (True, False))
    finally:
        dispatch._triton_agrees_on.cache_clear()
