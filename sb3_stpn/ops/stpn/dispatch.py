"""The STPN recurrence over a sequence: a fused autograd Function and the per-step reference loop.

``stpn_sequence`` is the single entry point the layer uses. It runs one of four paths, chosen by the
environment variable ``SB3_STPN_KERNEL``:

- ``reference``: ``stpn_sequence_reference``, one ``stpn_step`` of plain differentiable ops per time
  step, recorded by autograd. The straightforward implementation of ``shared/STPN.md``; the fallback
  and the oracle every other path is tested against.
- ``torch``: ``_FusedStpn`` with torch ops: the forward runs the loop without recording a graph, the
  backward is hand-derived BPTT (``_torch_step_backward``), one batched step at a time. Any device.
- ``cpp``: ``_FusedStpn`` with the C++ kernel ``csrc/stpn.cpp`` (compiled at first use with
  ``torch.utils.cpp_extension.load``): per sample (OpenMP over the batch) the whole time loop in fused
  passes over F, forward and backward. Training calls work on F transposed to (K, H) inside the
  kernel, so that per-neuron sums are vector accumulators; inference (rollout steps) on the public
  (H, K) rows, which needs no transpose at the boundary. CPU, float32/float64.
- ``triton``: ``_FusedStpn`` with the Triton kernels of ``stpn_triton`` (the same plan as ``cpp``, one
  program per sample on the GPU). CUDA tensors, float32/float64; CPU tensors under Triton's interpreter
  (``TRITON_INTERPRET=1``, for the tests).
- ``auto`` (default): ``cpp`` for CPU tensors when it builds, ``triton`` for CUDA tensors when triton
  imports, else ``torch``. A failed build or import is logged once per process and the ``torch`` path
  taken.

Memory of the fused paths (checkpointing instead of keeping T copies of F). With S = H * (K + plastic
bias) elements per sample, the forward keeps the outputs (T, B, H), which backward needs anyway, and
F at the start of every segment of C steps: B * ceil(T / C) * S. Backward recomputes one segment at a
time from its checkpoint and walks it in reverse: C * S per thread for ``cpp`` (a sample's segment),
B * C * S for ``torch`` (the batch's segment). C is the largest segment whose recompute buffer fits
``SEGMENT_BUDGET_BYTES``, but at least ceil(sqrt(T)), the length that minimises checkpoints plus
segment: e.g. B=256, T=32, H=64, K=68 in float32 keeps only F_0 for ``cpp`` (C = T, 0.55 MB per
thread). The recompute costs one extra forward pass and is exact: it repeats the forward's arithmetic.
"""

import fcntl
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import stat
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch as th

logger = logging.getLogger(__name__)

# Added to the row norms so that an all-zero row does not divide by zero (shared/STPN.md)
NORM_EPS = 1e-16
# Selects the path of stpn_sequence: auto (default), reference, torch, cpp or triton
KERNEL_ENV = "SB3_STPN_KERNEL"
KERNELS = ("auto", "reference", "torch", "cpp", "triton")
# Bound on the buffer holding a recomputed checkpoint segment (per thread for cpp, per call for torch)
SEGMENT_BUDGET_BYTES = 32 * 2**20
CPP_SOURCE = Path(__file__).parent / "csrc" / "stpn.cpp"


@dataclass(frozen=True)
class StpnConfig:
    """The options of the recurrence that are not learned parameters."""

    recurrent: bool = True
    normalize: bool = True
    clamp: float | None = None
    rule: str = "hebbian"
    # "pre": divide F_{t-1} by n_t before the Hebbian term; "post": divide the new F by its own norm
    norm_time: str = "pre"
    # If set, weight_lambda and bias_lambda are clamped to at most this in the forward (None: the paper's model)
    lambda_max: float | None = None


class DivergedStateError(ValueError):
    """The fast weights F (or the input) became inf or NaN: the outputs would be garbage from then on."""


DIVERGENCE_ADVICE = (
    "the fast weights F became inf or NaN (a decay weight_lambda or bias_lambda above 1 makes F grow without "
    "bound, most of all with normalize=False, a plastic bias or Oja's rule; or the input holds inf/NaN): bound F "
    "with clamp=c, or the decays with lambda_max=1.0"
)


def raise_if_diverged(finite: th.Tensor | bool) -> None:
    """Raise :class:`DivergedStateError` unless the kernel's flag ``finite`` (a bool, or a bool scalar tensor) is set."""
    if not finite:
        raise DivergedStateError(f"STPN: {DIVERGENCE_ADVICE}")


def row_norm(efficacy: th.Tensor, norm_gain: th.Tensor | None) -> th.Tensor:
    """n = g * (||efficacy||_2 over K + eps), per row and sample; g = 1 without a learned gain."""
    norm = th.linalg.vector_norm(efficacy, dim=-1) + NORM_EPS
    return norm if norm_gain is None else norm * norm_gain


def stpn_step(
    x: th.Tensor,
    h: th.Tensor,
    fast: th.Tensor,
    weight: th.Tensor,
    bias: th.Tensor,
    weight_lambda: th.Tensor,
    weight_gamma: th.Tensor,
    bias_plasticity: tuple[th.Tensor, th.Tensor] | None,
    config: StpnConfig,
    record_energy: bool = False,
    norm_gain: th.Tensor | None = None,
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
    """
    One step of the STPN: ``x`` (B, I), ``h`` (B, H), ``fast`` (B, H, K[+1]), ``norm_gain`` (H,) or None.

    :return: the new ``h``, the new ``F`` and, if asked, the energy per sample (B,).
    """
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
    if bias_plasticity is not None:
        drive = drive + fast[..., presynaptic]
    h_new = th.tanh(drive)

    if config.rule == "oja":
        presynaptic_trace = z - th.bmm(h_new.unsqueeze(1), synaptic_fast).squeeze(1)
    else:
        presynaptic_trace = z
    fast_new = weight_lambda * decayed + weight_gamma * (h_new.unsqueeze(-1) * presynaptic_trace.unsqueeze(1))
    if config.clamp is not None:
        fast_new = fast_new.clamp(-config.clamp, config.clamp)
    if post_norm:
        fast_new = fast_new / row_norm(weight + fast_new, norm_gain).unsqueeze(-1)
    if bias_plasticity is not None:
        bias_lambda, bias_gamma = bias_plasticity
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
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    weight: th.Tensor,
    bias: th.Tensor,
    weight_lambda: th.Tensor,
    weight_gamma: th.Tensor,
    bias_plasticity: tuple[th.Tensor, th.Tensor] | None,
    config: StpnConfig,
    record_energy: bool = False,
    norm_gain: th.Tensor | None = None,
) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
    """
    Run the STPN over ``x`` (T, B, I) from state ``(h0, fast0)``, one autograd-recorded step at a time.

    ``episode_starts`` (T, B) zeroes the state of a row before the step it marks.

    :return: outputs (T, B, H), final ``h``, final ``F`` and, if asked, energy (T, B).
    """
    h, fast = h0, fast0
    outputs, energies = [], []
    finite = th.ones((), dtype=th.bool, device=x.device)
    for t in range(x.shape[0]):
        if episode_starts is not None:
            keep = 1.0 - episode_starts[t].to(x.dtype)
            h = h * keep.unsqueeze(-1)
            fast = fast * keep.view(-1, 1, 1)
        h_new, fast, energy = stpn_step(
            x[t], h, fast, weight, bias, weight_lambda, weight_gamma, bias_plasticity, config, record_energy, norm_gain
        )
        # Accumulated on the device, read once per call
        finite = finite & th.isfinite(fast).all()
        # STPNf has no recurrent input: its carried h is just the last output
        h = h_new
        outputs.append(h_new)
        energies.append(energy)
    raise_if_diverged(finite)
    energy = th.stack(energies) if record_energy else None
    return th.stack(outputs), h, fast, energy


class _Backend(NamedTuple):
    """How a fused path runs the sequence (``forward``) and its BPTT (``backward``)."""

    forward: Callable[..., tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]]
    backward: Callable[..., tuple[th.Tensor | None, ...]]
    # Bytes of the recomputed segment buffer per step of F of one sample (cpp) or of the batch (torch)
    per_batch_segment: bool


def checkpoint_interval(steps: int, segment_step_bytes: int) -> int:
    """The segment length C: as long as the budget allows, at least ceil(sqrt(T)), at most T."""
    return max(math.isqrt(steps - 1) + 1, min(steps, SEGMENT_BUDGET_BYTES // max(segment_step_bytes, 1)))


def _torch_forward(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    starts: th.Tensor | None,
    params: tuple[th.Tensor | None, ...],
    config: StpnConfig,
    record_energy: bool,
    every: int,
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
    """The reference loop, segment by segment, keeping F at each segment start (none if ``every`` is 0)."""
    weight, bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = params
    bias_plasticity = None if bias_lambda is None else (bias_lambda, bias_gamma)
    steps = x.shape[0]
    every = every or steps
    h, fast = h0, fast0
    checkpoints, outputs, energies = [], [], []
    for t0 in range(0, steps, every):
        checkpoints.append(fast)
        segment = slice(t0, t0 + every)
        out, h, fast, energy = stpn_sequence_reference(
            x[segment],
            h,
            fast,
            None if starts is None else starts[segment],
            weight,
            bias,
            weight_lambda,
            weight_gamma,
            bias_plasticity,
            config,
            record_energy,
            norm_gain,
        )
        outputs.append(out)
        energies.append(energy)
    energy = th.cat(energies) if record_energy else None
    return th.cat(outputs), fast, energy, th.stack(checkpoints)


def _norm_backward(
    d_norm: th.Tensor, efficacy: th.Tensor, raw_norm: th.Tensor, norm_gain: th.Tensor | None, grads: list
) -> th.Tensor:
    """
    Through n = g * (||efficacy|| + eps): the gradient of ``efficacy`` given that of n, adding g's to ``grads``.

    ``raw_norm`` is ||efficacy|| without eps; its gradient efficacy / ||efficacy|| is zero for a zero row, as in torch.
    """
    if norm_gain is not None:
        grads[6] += (d_norm * (raw_norm + NORM_EPS)).sum(0)
        d_norm = d_norm * norm_gain
    return th.where(raw_norm > 0, d_norm / raw_norm, 0.0).unsqueeze(-1) * efficacy


def _torch_step_backward(
    z: th.Tensor,
    fast: th.Tensor,
    h: th.Tensor,
    d_fast: th.Tensor,
    dh: th.Tensor,
    params: tuple[th.Tensor | None, ...],
    grads: list[th.Tensor | None],
    config: StpnConfig,
) -> tuple[th.Tensor, th.Tensor]:
    """
    Hand-derived backward of ``stpn_step`` for a batch: ``fast`` is F entering the step (after a reset).

    :param d_fast: gradient of F after the step; ``dh``: the whole gradient of the step's output ``h``.
    :param grads: the parameter gradients (None for absent parameters), accumulated in place.
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
        inv_norm = 1.0 / (raw_norm + NORM_EPS)
        if norm_gain is not None:
            inv_norm = inv_norm / norm_gain
        if not post_norm:
            decayed = synaptic * inv_norm.unsqueeze(-1)
    updated = weight_lambda * decayed + weight_gamma * h_col * trace_row
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
        grads[0] += d_new_efficacy.sum(0)
        d_new = d_new * inv_new_norm.unsqueeze(-1) + d_new_efficacy
    if config.clamp is not None:
        d_new = d_new * (updated.abs() <= config.clamp)
    grads[2] += (d_new * decayed).sum(0)
    grads[3] += (d_new * h_col * trace_row).sum(0)
    d_gamma_new = d_new * weight_gamma
    d_trace = (d_gamma_new * h_col).sum(1)
    dh = dh + (d_gamma_new * trace_row).sum(-1)
    d_synaptic = d_new * weight_lambda
    if config.normalize and not post_norm:
        d_synaptic = d_synaptic * inv_norm.unsqueeze(-1)
    if config.rule == "oja":
        d_synaptic = d_synaptic - h_col * d_trace.unsqueeze(1)
        dh = dh - th.bmm(synaptic, d_trace.unsqueeze(-1)).squeeze(-1)
    if bias_lambda is not None:
        fast_bias = fast[..., presynaptic]
        d_bias_new = d_fast[..., presynaptic]
        if config.clamp is not None:
            d_bias_new = d_bias_new * ((bias_lambda * fast_bias + bias_gamma * h).abs() <= config.clamp)
        grads[4] += (d_bias_new * fast_bias).sum(0)
        grads[5] += (d_bias_new * h).sum(0)
        dh = dh + d_bias_new * bias_gamma
    d_drive = dh * (1.0 - h.square())
    grads[1] += d_drive.sum(0)
    d_raw = d_drive
    d_efficacy = 0.0
    if config.normalize:
        drive = th.bmm(efficacy, z.unsqueeze(-1)).squeeze(-1)
        d_raw = d_drive * inv_norm
        d_decayed_norm = 0.0 if post_norm else (d_new * weight_lambda * synaptic).sum(-1)
        d_norm = -(d_decayed_norm + d_drive * drive) * inv_norm.square()
        d_efficacy = _norm_backward(d_norm, efficacy, raw_norm, norm_gain, grads)
    d_efficacy = d_efficacy + d_raw.unsqueeze(-1) * z.unsqueeze(1)
    grads[0] += d_efficacy.sum(0)
    d_synaptic = d_synaptic + d_efficacy
    dz = d_trace + th.bmm(d_raw.unsqueeze(1), efficacy).squeeze(1)
    if bias_lambda is not None:
        d_fast_bias = d_bias_new * bias_lambda + d_drive
        d_synaptic = th.cat([d_synaptic, d_fast_bias.unsqueeze(-1)], dim=-1)
    return dz, d_synaptic


def _torch_backward(
    x: th.Tensor,
    h0: th.Tensor,
    starts: th.Tensor | None,
    checkpoints: th.Tensor,
    outputs: th.Tensor,
    params: tuple[th.Tensor | None, ...],
    config: StpnConfig,
    every: int,
    d_outputs: th.Tensor,
    d_fast: th.Tensor,
) -> tuple[th.Tensor | None, ...]:
    """BPTT with torch ops: per segment, recompute the states entering its steps, then walk it in reverse."""
    weight, bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = params
    bias_plasticity = None if bias_lambda is None else (bias_lambda, bias_gamma)
    steps, _, inputs = x.shape
    grads = [None if p is None else th.zeros_like(p) for p in params]
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
                _, fast, _ = stpn_step(
                    x[t],
                    step_input(t)[1],
                    fast,
                    weight,
                    bias,
                    weight_lambda,
                    weight_gamma,
                    bias_plasticity,
                    config,
                    norm_gain=norm_gain,
                )
        for t in reversed(range(t0, t1)):
            z, _ = step_input(t)
            dz, d_fast = _torch_step_backward(
                z, states[t - t0], outputs[t], d_fast, d_outputs[t] + dh_carry, params, grads, config
            )
            dx[t] = dz[:, :inputs]
            dh_carry = dz[:, inputs:] if config.recurrent else th.zeros_like(dh_carry)
            if keep is not None:
                d_fast = d_fast * keep[t].unsqueeze(-1)
                dh_carry = dh_carry * keep[t]
    return (dx, dh_carry, d_fast, *grads)


@functools.cache
def _cpp_ops() -> object | None:
    """Build (or load from the cache) the C++ kernel; None, logged once, when it cannot be built."""
    try:
        return _build_cpp_extension()
    except Exception as error:  # a missing compiler or a failed build must not stop the layer
        logger.warning("sb3_stpn: the C++ STPN kernel is unavailable (%s); using the torch-op path", error)
        return None


def cpp_kernel_available() -> bool:
    """Whether the C++ kernel builds here (or loads from its cache); building it once up front saves the wait later."""
    return _cpp_ops() is not None


CPP_CFLAGS = ["-O3", "-march=native", "-fopenmp-simd"]
# How long a process waits for another one building the kernel before it gives up (a build takes about a minute)
BUILD_LOCK_TIMEOUT_S = 600.0
BUILD_LOCK_POLL_S = 0.2


def _cpu_instruction_set() -> str:
    """What ``-march=native`` compiles for: the CPU's feature flags (Linux), else the processor's name."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    flags = next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {flags}"


def cpp_build_directory() -> Path:
    """
    Where the C++ kernel is built and cached: one folder per source, compiler (``CXX``) and flags, torch and
    Python version, header and library paths (torch's and Python's: the environment) and CPU instruction set,
    under torch's extension root (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). Two
    machines sharing a home directory never load a binary built for another CPU, checkouts of the same source
    in one environment share one build, and two virtualenvs do not rebuild each other's (torch's build
    command names the environment's headers, so one folder for both was rebuilt at every switch).
    """
    from torch.utils import cpp_extension

    environment = [*cpp_extension.include_paths(), *cpp_extension.library_paths(), sysconfig.get_paths()["include"]]
    key = "\n".join(
        [
            CPP_SOURCE.read_text(),
            os.environ.get("CXX", "c++"),
            " ".join(CPP_CFLAGS),
            th.__version__,
            sys.version,
            *environment,
            _cpu_instruction_set(),
        ]
    )
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / f"sb3_stpn_kernel_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _build_cpp_extension() -> object:
    """Load the C++ kernel, building it first (about a minute, said in one line) if its cache folder has none."""
    from torch.utils import cpp_extension

    build_directory = cpp_build_directory()
    name = build_directory.name
    library = build_directory / f"{name}{cpp_extension.LIB_EXT}"
    _make_private_folder(build_directory)
    with _build_lock(build_directory):
        source = _cached_source(build_directory, library)
        if not library.is_file():
            print(f"sb3_stpn: building the C++ STPN kernel in {build_directory} (about a minute, once)", file=sys.stderr)
        with _ninja_on_path():
            cpp_extension.load(
                name=name,
                sources=[str(source)],
                extra_cflags=CPP_CFLAGS,
                build_directory=str(build_directory),
                is_python_module=False,
                verbose=False,
            )
    return th.ops.sb3_stpn


def _make_private_folder(folder: Path) -> None:
    """
    Make the cache folder, readable and writable by the user only (0700), or check the one there.

    Its name is predictable and torch's extension root may be shared: in a folder another account owns or
    may write to, that account could plant the source or library this process then builds or loads.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    status = folder.lstat()
    problem = (
        "is a symbolic link" if stat.S_ISLNK(status.st_mode)
        else f"belongs to uid {status.st_uid}, not to you" if status.st_uid != os.geteuid()
        else "is writable by group or others" if status.st_mode & 0o022
        else None
    )  # fmt: skip
    if problem is not None:
        raise PermissionError(
            f"refusing the kernel cache folder {folder}, which {problem}; remove it, or set TORCH_EXTENSIONS_DIR "
            "to a folder of your own"
        )


def _cached_source(build_directory: Path, library: Path) -> Path:
    """
    The folder's copy of the kernel source, byte for byte the package's (built from a copy, so that every
    checkout's build is the same): a copy that differs is replaced, and the library built from it removed.
    """
    source = build_directory / CPP_SOURCE.name
    package_source = CPP_SOURCE.read_bytes()
    if source.is_file() and source.read_bytes() == package_source:
        return source
    if source.exists():
        print(f"sb3_stpn: {source} differs from the package's kernel source; rebuilding from the package's", file=sys.stderr)
        library.unlink(missing_ok=True)
    # A fresh, unpredictable name (O_EXCL), which no symbolic link planted ahead can redirect
    descriptor, partial = tempfile.mkstemp(dir=build_directory, prefix=f".{source.name}.", suffix=".tmp")
    with open(descriptor, "wb") as copy:
        copy.write(package_source)
    os.replace(partial, source)
    return source


@contextmanager
def _build_lock(build_directory: Path) -> Iterator[None]:
    """
    Hold an exclusive ``flock`` on ``<build folder>/build.flock`` while torch builds or loads the kernel.

    torch's own lock (the file ``lock``, made with O_EXCL) outlives a build killed by SIGKILL, SIGTERM or
    the OOM killer, and every later load then waits on it forever. A ``flock`` is released by the kernel
    when its process dies, so whoever holds ours is alive, and a ``lock`` found under it is a dead build's:
    it is removed. Waiting for a live builder ends after ``BUILD_LOCK_TIMEOUT_S`` with a :class:`TimeoutError`.
    """
    lock_path = build_directory / "build.flock"
    with open(lock_path, "a") as lock_file:
        deadline = time.monotonic() + BUILD_LOCK_TIMEOUT_S
        waiting = False
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {BUILD_LOCK_TIMEOUT_S:g} s for {lock_path}, held by another process building the "
                        "kernel; stop that process, or set TORCH_EXTENSIONS_DIR to another folder"
                    ) from None
                if not waiting:
                    print(f"sb3_stpn: waiting for another process building the C++ STPN kernel ({lock_path})", file=sys.stderr)
                    waiting = True
                time.sleep(BUILD_LOCK_POLL_S)
        try:
            (build_directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's extension loader runs ``ninja`` from PATH: add the ``ninja`` package's binary when the
    environment is used without being activated (``.venv/bin/python train.py``)."""
    path = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


def _cpp_flags(config: StpnConfig) -> tuple[bool, bool, bool, bool, float]:
    clamp = -1.0 if config.clamp is None else float(config.clamp)
    return config.recurrent, config.normalize, config.rule == "oja", config.norm_time == "post", clamp


def _cpp_forward(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    starts: th.Tensor | None,
    params: tuple[th.Tensor | None, ...],
    config: StpnConfig,
    record_energy: bool,
    every: int,
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
    (outputs, fast, energy, checkpoints), finite = _cpp_ops().forward(
        x, h0, fast0, starts, *params, *_cpp_flags(config), record_energy, every
    )
    raise_if_diverged(finite)
    return outputs, fast, energy if record_energy else None, checkpoints


def _cpp_backward(
    x: th.Tensor,
    h0: th.Tensor,
    starts: th.Tensor | None,
    checkpoints: th.Tensor,
    outputs: th.Tensor,
    params: tuple[th.Tensor | None, ...],
    config: StpnConfig,
    every: int,
    d_outputs: th.Tensor,
    d_fast: th.Tensor,
) -> tuple[th.Tensor | None, ...]:
    grads = _cpp_ops().backward(x, h0, starts, checkpoints, outputs, *params, *_cpp_flags(config), every, d_outputs, d_fast)
    # The kernel returns an empty tensor for each absent parameter (bias lambda and gamma, norm gain)
    return tuple(grads[:3]) + tuple(None if p is None else g for p, g in zip(params, grads[3:], strict=True))


@functools.cache
def _triton_ops() -> ModuleType | None:
    """The Triton kernels (imported on first use); None, logged once, when triton does not import."""
    try:
        from sb3_stpn.ops.stpn import fused_triton as stpn_triton
    except Exception as error:  # triton missing or broken must not stop the layer
        logger.warning("sb3_stpn: the Triton STPN kernel is unavailable (%s); using the torch-op path", error)
        return None
    return stpn_triton


def triton_kernel_available() -> bool:
    """Whether the Triton kernels import here (they run on CUDA tensors, or on CPU ones under TRITON_INTERPRET=1)."""
    return _triton_ops() is not None


def _triton_forward(*args: object) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
    outputs, fast, energy, checkpoints = _triton_ops().forward(*args)
    # The Triton kernels have no divergence flag yet (the C++ one has): F_T is checked once per call
    raise_if_diverged(th.isfinite(fast).all())
    return outputs, fast, energy, checkpoints


def _triton_backward(*args: object) -> tuple[th.Tensor | None, ...]:
    return _triton_ops().backward(*args)


BACKENDS = {
    "torch": _Backend(_torch_forward, _torch_backward, per_batch_segment=True),
    "cpp": _Backend(_cpp_forward, _cpp_backward, per_batch_segment=False),
    # Every sample's segment is recomputed at once on the GPU
    "triton": _Backend(_triton_forward, _triton_backward, per_batch_segment=True),
}


class _FusedStpn(th.autograd.Function):
    """The whole sequence as one autograd node: the backend's forward loop, then its hand-derived BPTT."""

    @staticmethod
    def forward(
        ctx: th.autograd.function.FunctionCtx,
        backend: _Backend,
        config: StpnConfig,
        record_energy: bool,
        x: th.Tensor,
        h0: th.Tensor,
        fast0: th.Tensor,
        starts: th.Tensor | None,
        *params: th.Tensor | None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        steps, batch = x.shape[:2]
        step_bytes = fast0[0].numel() * fast0.element_size() * (batch if backend.per_batch_segment else 1)
        every = checkpoint_interval(steps, step_bytes)
        outputs, fast, energy, checkpoints = backend.forward(x, h0, fast0, starts, params, config, record_energy, every)
        ctx.save_for_backward(x, h0, starts, checkpoints, outputs, *params)
        ctx.backend, ctx.config, ctx.every = backend, config, every
        if energy is not None:
            ctx.mark_non_differentiable(energy)
        return outputs, fast, energy

    @staticmethod
    @th.autograd.function.once_differentiable
    def backward(
        ctx: th.autograd.function.FunctionCtx, d_outputs: th.Tensor, d_fast: th.Tensor, _: th.Tensor | None
    ) -> tuple[th.Tensor | None, ...]:
        x, h0, starts, checkpoints, outputs, *params = ctx.saved_tensors
        grads = ctx.backend.backward(
            x, h0, starts, checkpoints, outputs, tuple(params), ctx.config, ctx.every, d_outputs, d_fast
        )
        return (None, None, None, *grads[:3], None, *grads[3:])


def kernel_choice(x: th.Tensor) -> str:
    """The path ``stpn_sequence`` takes for ``x``: ``SB3_STPN_KERNEL``, or for ``auto`` the fastest available."""
    choice = os.environ.get(KERNEL_ENV, "auto").lower()
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={choice!r}: use one of {', '.join(KERNELS)}")
    cpp_fits = x.device.type == "cpu" and x.dtype in (th.float32, th.float64)
    triton_fits = x.dtype in (th.float32, th.float64) and (
        x.device.type == "cuda" or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
    )
    if choice == "triton":
        if not triton_fits:
            raise ValueError(
                f"{KERNEL_ENV}=triton needs float32/float64 CUDA tensors (CPU ones only under TRITON_INTERPRET=1), "
                f"got {x.dtype} on {x.device}"
            )
        if _triton_ops() is None:
            raise RuntimeError(f"{KERNEL_ENV}=triton but triton does not import (see the log): pip install triton")
    if choice == "cpp":
        if not cpp_fits:
            raise ValueError(f"{KERNEL_ENV}=cpp needs float32/float64 CPU tensors, got {x.dtype} on {x.device}")
        if _cpp_ops() is None:
            raise RuntimeError(f"{KERNEL_ENV}=cpp but the C++ kernel could not be built (see the log)")
    if choice == "auto":
        if x.device.type == "cuda" and triton_fits and _triton_ops() is not None:
            return "triton"
        return "cpp" if cpp_fits and _cpp_ops() is not None else "torch"
    return choice


def _shape_error(name: str, expected: tuple, got: tuple, fix: str) -> ValueError:
    # An LSTM-style state carries a leading layer axis of size 1: say so rather than only the shapes
    if len(got) == len(expected) + 1 and got[0] == 1 and tuple(got[1:]) == expected:
        fix = "drop the leading layer axis of size 1 (an LSTM-style state): pass (h[0], F[0])"
    return ValueError(f"STPN: {name} must have shape {expected}, got {tuple(got)}: {fix}")


PARAMETER_NAMES = ("bias", "weight_lambda", "weight_gamma", "bias_lambda", "bias_gamma", "norm_gain")


def check_inputs(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    weight: th.Tensor,
    parameters: tuple[th.Tensor | None, ...],
    config: StpnConfig,
) -> None:
    """
    Raise a ``ValueError`` naming the expected and received shape, dtype or device of the first bad input.

    ``parameters``: the others than ``weight``, in the order of ``PARAMETER_NAMES``, None where absent;
    their dtype and device are ``weight``'s (``Module.to`` moves them together), so only their shapes
    are checked here.
    """
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
    fast_shape = (batch, hidden, presynaptic + (parameters[3] is not None))
    if fast0.shape != fast_shape:
        raise _shape_error("the state F", fast_shape, tuple(fast0.shape), state_fix)
    if episode_starts is not None:
        if episode_starts.shape != (steps, batch):
            raise _shape_error("episode_starts", (steps, batch), tuple(episode_starts.shape), "one flag per step and sample")
        if episode_starts.device != device:
            raise ValueError(f"STPN: episode_starts is on {episode_starts.device}, x on {device}: move it to {device}")
    # Per neuron, or per synapse, or (scalar plasticity) one scalar
    neuron, synapse = (hidden,), (hidden, presynaptic)
    for name, tensor in zip(PARAMETER_NAMES, parameters, strict=True):
        if tensor is not None:
            allowed = (synapse, ()) if name.startswith("weight") else (neuron, ()) if name.startswith("bias_") else (neuron,)
            if tensor.shape not in allowed:
                raise _shape_error(name, allowed[0], tuple(tensor.shape), "pass the layer's own parameter")


def _broadcast(plasticity: th.Tensor, like: th.Tensor) -> th.Tensor:
    return plasticity if plasticity.shape == like.shape else plasticity.expand_as(like)


def stpn_sequence(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    weight: th.Tensor,
    bias: th.Tensor,
    weight_lambda: th.Tensor,
    weight_gamma: th.Tensor,
    bias_plasticity: tuple[th.Tensor, th.Tensor] | None,
    config: StpnConfig,
    record_energy: bool = False,
    norm_gain: th.Tensor | None = None,
) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
    """
    Run the STPN over ``x`` (T, B, I) from state ``(h0, fast0)`` on the path chosen by :func:`kernel_choice`.

    ``episode_starts`` (T, B) zeroes the state of a row before the step it marks; ``norm_gain`` (H,) scales
    the row norms (None: no gain). Same results and gradients as :func:`stpn_sequence_reference`. A bad
    input raises a ``ValueError`` (:func:`check_inputs`), an inf or NaN in F a :class:`DivergedStateError`.

    :return: outputs (T, B, H), final ``h``, final ``F`` and, if asked, energy (T, B).
    """
    bias_lambda, bias_gamma = (None, None) if bias_plasticity is None else bias_plasticity
    if config.lambda_max is not None:
        # In the forward, so that the gradient sees the bound (zero above it), on every path alike
        weight_lambda = weight_lambda.clamp(max=config.lambda_max)
        if bias_lambda is not None:
            bias_lambda = bias_lambda.clamp(max=config.lambda_max)
    parameters = (bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain)
    try:
        return _run_sequence(kernel_choice(x), x, h0, fast0, episode_starts, weight, parameters, config, record_energy)
    except Exception:
        # Whatever failed first (the kernel's own checks, a broadcast, the checkpoint plan of an empty
        # batch), a bad input is named as such; else the error stands
        check_inputs(x, h0, fast0, episode_starts, weight, parameters, config)
        raise


def _run_sequence(
    choice: str,
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    episode_starts: th.Tensor | None,
    weight: th.Tensor,
    parameters: tuple[th.Tensor | None, ...],
    config: StpnConfig,
    record_energy: bool,
) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
    """
    :func:`stpn_sequence` on the path ``choice``, after the input checks.

    The C++ entry points check every input before touching memory: on that path the Python checks run
    only when the kernel rejects a call (to name the problem in a ValueError), so that rollouts, one
    call per env step, do not pay for the checks twice.
    """
    if choice != "cpp":
        check_inputs(x, h0, fast0, episode_starts, weight, parameters, config)
    bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain = parameters
    if choice == "reference":
        bias_plasticity = None if bias_lambda is None else (bias_lambda, bias_gamma)
        return stpn_sequence_reference(
            x,
            h0,
            fast0,
            episode_starts,
            weight,
            bias,
            weight_lambda,
            weight_gamma,
            bias_plasticity,
            config,
            record_energy,
            norm_gain,
        )
    # Scalar plasticity is broadcast here, so that autograd sums its gradient. Rollouts call this once
    # per env step with T=1, so per-call Python work counts: full-size tensors are passed as they are.
    params = (
        weight,
        bias,
        _broadcast(weight_lambda, weight),
        _broadcast(weight_gamma, weight),
        None if bias_lambda is None else _broadcast(bias_lambda, bias),
        None if bias_gamma is None else _broadcast(bias_gamma, bias),
        norm_gain,
    )
    starts = None if episode_starts is None else episode_starts.to(x.dtype)
    backend = BACKENDS[choice]
    tensors = (x, h0, fast0, *params)
    if th.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        outputs, fast, energy = _FusedStpn.apply(backend, config, record_energy, x, h0, fast0, starts, *params)
    else:
        # Inference (rollouts): no checkpoints to keep
        outputs, fast, energy, _ = backend.forward(x, h0, fast0, starts, params, config, record_energy, 0)
    return outputs, outputs[-1], fast, energy
