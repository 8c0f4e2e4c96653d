"""
Time the STPN layer on each kernel path against ``torch.nn.LSTM``, and the peak memory a call allocates; print a
markdown table, write JSON.

Training cases time forward + backward of a whole (T, B) batch; rollout cases (T=1) time one forward
step without grad. LSTMs are timed at the STPN's hidden size and at an equal parameter count (on CUDA
they run on cuDNN).

Bytes the fused kernels move per sample and step, with S = H * K elements of F and K = I + H:
- ``cpp``: forward + backward ``7 S + 15 H K``: F read and written once by the forward and once by the
  backward's recompute (one fused pass each), F read and dF read and written once by the backward (its
  two passes run block by block of 16 neurons, the second on the block's columns still in cache); W,
  lambda, gamma read three times in all and their three gradients read and written. Forward only
  (inference) ``2 S + 3 H K``.
- ``triton``: forward + backward ``16 S + 9 H K`` (see ``sb3_stpn.ops.stpn.fused_triton``: the backward's
  two passes each read F again and the per-sample gradients of W, lambda, gamma are read and written
  at every step; W, lambda, gamma are read nine times in all, from L2). A rollout step ``3 S + 4 H K``.
The implied bandwidth (bytes / time) sits next to the device's copy bandwidth, measured on a large
tensor in the same run.

Usage: ``python -m benchmarks.layer [--device cpu|cuda] [--threads 1] [--quick] [--paths torch cpp]
[--out benchmarks/results/layer.json]``
"""

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch as th
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from sb3_stpn.common.stpn import STPN
from sb3_stpn.ops.stpn import KERNEL_ENV, KERNELS, cpp_kernel_available, triton_kernel_available

TRAIN_CASES = [(256, 32, 4, 64), (8, 128, 512, 128), (64, 32, 32, 64)]
ROLLOUT_CASES = [(8, 1, 512, 128), (8, 1, 4, 64)]
# (B, T, I, H) on a GPU: CartPoleNoVel's minibatch (256 steps in sequences of 32, 2 inputs) and a larger
# batch, GridMaze's (16 inputs, H=55) and the paper's maze batch, Atari with NatureCNN's 512 features and
# with the paper's 2592 conv features and H=128 (64 workers x 50 steps); rollouts at each env count
CUDA_TRAIN_CASES = [
    (8, 32, 2, 64),
    (256, 32, 4, 64),
    (4, 200, 16, 55),
    (512, 200, 16, 55),
    (8, 32, 512, 64),
    (64, 50, 2592, 128),
]
CUDA_ROLLOUT_CASES = [(8, 1, 2, 64), (512, 1, 16, 55), (8, 1, 512, 64), (64, 1, 2592, 128)]
QUICK_TRAIN_CASES = [(16, 8, 4, 16)]
QUICK_ROLLOUT_CASES = [(4, 1, 4, 16)]
# Bytes each fused path moves per sample and step, in units of H * K elements: (training, rollout)
KERNEL_TRAFFIC = {"cpp": (22, 5), "triton": (25, 7)}
# Rollout steps per timing: one step alone is too short to time
ROLLOUT_STEPS = 20


def timings(fn: Callable[[], None], repeats: int, device: th.device) -> list[float]:
    """Seconds per call after one warm-up call; on CUDA each call ends when the GPU has done its work."""
    synchronize = th.cuda.synchronize if device.type == "cuda" else lambda: None
    fn()
    synchronize()
    result = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        result.append(time.perf_counter() - start)
    return result


def peak_memory(fn: Callable[[], None], device: th.device) -> int:
    """
    Bytes of ``device`` memory one call of ``fn`` holds at its peak, beyond what was allocated before it: on CUDA the
    allocator's statistics; on CPU, which keeps none, the allocations and frees a memory profile of the call records.
    """
    if device.type == "cuda":
        th.cuda.synchronize()
        before = th.cuda.memory_allocated(device)
        th.cuda.reset_peak_memory_stats(device)
        fn()
        th.cuda.synchronize()
        return th.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as memory_profile:
        fn()
    # The event tree is torch's private record (the public events fold allocations into the ops that made them)
    events, changes = list(memory_profile.profiler.kineto_results.experimental_event_tree()), []
    while events:
        event = events.pop()
        events.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == device.type:
            changes.append((event.start_time_ns, event.extra_fields.alloc_size))
    held = peak = 0
    for _, size in sorted(changes):
        held += size
        peak = max(peak, held)
    return peak


def copy_bandwidth(repeats: int, megabytes: int, device: th.device) -> float:
    """Bytes per second of a large tensor copy (read + write) on ``device``."""
    source = th.ones(megabytes * 2**20 // 4, device=device)
    target = th.empty_like(source)
    best = min(timings(lambda: target.copy_(source), repeats, device))
    return 2 * source.numel() * 4 / best


def lstm_hidden_for_params(count: int, inputs: int) -> int:
    """The LSTM hidden size whose 4H(I + H) + 8H parameters come closest to ``count``."""
    return max(1, round((-(4 * inputs + 8) + math.sqrt((4 * inputs + 8) ** 2 + 16 * count)) / 8))


def step_function(module: th.nn.Module, x: th.Tensor, train: bool) -> Callable[[], None]:
    # A rollout step carries the state of the previous step, as the policy does: without it the STPN
    # would time allocating and zeroing its F (B, H, K) on every call, which rollouts never do
    batch = x.shape[1]
    if isinstance(module, STPN):
        state = module.initial_state(batch)
    else:
        state = tuple(th.zeros(1, batch, module.hidden_size, device=x.device) for _ in range(2))

    def run() -> None:
        if train:
            output, _ = module(x)
            output.sum().backward()
        else:
            with th.no_grad():
                for _ in range(ROLLOUT_STEPS):
                    module(x, state)

    return run


def bench_case(
    batch: int, steps: int, inputs: int, hidden: int, train: bool, repeats: int, paths: list[str], device: th.device
) -> list[dict]:
    stpn = STPN(inputs, hidden).to(device)
    params = sum(p.numel() for p in stpn.parameters())
    x = th.randn(steps, batch, inputs, device=device, requires_grad=train)
    rows = []
    lstm_sizes = {"LSTM same H": hidden, "LSTM same params": lstm_hidden_for_params(params, inputs)}
    for name, lstm_hidden in lstm_sizes.items():
        lstm = th.nn.LSTM(inputs, lstm_hidden).to(device)
        run = step_function(lstm, x, train)
        rows.append(
            {"model": f"{name} (H={lstm_hidden})", "seconds": timings(run, repeats, device), "peak": peak_memory(run, device)}
        )
    for path in paths:
        os.environ[KERNEL_ENV] = path
        # The per-step reference loop is slow: fewer repeats
        count = max(2, repeats // 4) if path == "reference" else repeats
        run = step_function(stpn, x, train)
        seconds = timings(run, count, device)
        traffic = KERNEL_TRAFFIC.get(path)
        kernel_bytes = traffic and 4 * batch * steps * hidden * (inputs + hidden) * traffic[0 if train else 1]
        rows.append({"model": f"STPN {path}", "seconds": seconds, "bytes": kernel_bytes, "peak": peak_memory(run, device)})
    if not train:
        for row in rows:
            row["seconds"] = [s / ROLLOUT_STEPS for s in row["seconds"]]
    lstm_same, lstm_params = (statistics.median(r["seconds"]) for r in rows[:2])
    for row in rows:
        median = statistics.median(row["seconds"])
        row.update(
            case=f"B={batch} T={steps} I={inputs} H={hidden}" + ("" if train else " rollout, no grad"),
            train=train,
            median_ms=1e3 * median,
            min_ms=1e3 * min(row["seconds"]),
            vs_lstm_same_h=median / lstm_same,
            vs_lstm_same_params=median / lstm_params,
            gbps=row.get("bytes") and row["bytes"] / median / 1e9,
            peak_mib=row["peak"] / 2**20,
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | model | median ms | min ms | x LSTM same H | x LSTM same params | kernel GB/s | peak MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        gbps = f"{r['gbps']:.1f}" if r["gbps"] else ""
        lines.append(
            f"| {r['case']} | {r['model']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
            f"{r['vs_lstm_same_h']:.2f} | {r['vs_lstm_same_params']:.2f} | {gbps} | {r['peak_mib']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: the GPU cases, Triton vs cuDNN")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--paths", nargs="+", choices=KERNELS[1:], help="the STPN paths to time (default: all here)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/layer.json"))
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    th.manual_seed(0)
    repeats = args.repeats or (3 if args.quick else 9)
    device = th.device(args.device)
    if device.type == "cuda":
        # The per-step reference loop would launch thousands of tiny kernels per call
        paths = ["torch"] + (["triton"] if triton_kernel_available() else [])
        train_cases, rollout_cases = CUDA_TRAIN_CASES, CUDA_ROLLOUT_CASES
        name = th.cuda.get_device_name(device)
    else:
        paths = ["reference", "torch"] + (["cpp"] if cpp_kernel_available() else [])
        train_cases, rollout_cases = TRAIN_CASES, ROLLOUT_CASES
        name = f"CPU, {th.get_num_threads()} thread(s)"
    if args.paths:
        paths = args.paths
    if args.quick:
        train_cases, rollout_cases = QUICK_TRAIN_CASES, QUICK_ROLLOUT_CASES
    cases = [(c, True) for c in train_cases] + [(c, False) for c in rollout_cases]
    bandwidth = copy_bandwidth(repeats, 64 if args.quick else 512, device)
    rows = [row for (case, train) in cases for row in bench_case(*case, train, repeats, paths, device)]
    print(f"{name}, torch {th.__version__}, copy bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": name,
        "threads": th.get_num_threads(),
        "torch": th.__version__,
        "copy_bandwidth_gbps": bandwidth / 1e9,
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
