"""
How large the fast weights ``F`` grow against the slow ones ``W`` within an episode, at initialisation.

For each setting, a freshly initialised ``STPN(4, 64)`` (the paper's initialisation) reads random
N(0, 1) inputs from a zero state; the table gives, at several steps, the mean over neurons and
sequences of ``||F_i|| / ||W_i||`` (``F``'s synaptic columns, one row per neuron). Where it reaches
order 1 within an episode, the layer's effective weights are dominated by its fast component from
the start of every episode, before any learning; where it stays tiny, the plasticity starts silent
and its size is whatever the optimiser makes ``gamma``.

With weight normalisation before the update (``norm_time="pre"``), ``F`` is divided by the row norm
``n_t = ||W + F_{t-1}||`` at each step, so a synapse whose ``lambda`` exceeds ``n_t`` grows by
``lambda / n_t`` per step, whatever ``gamma`` is: the rows below show it.

Run: ``python -m benchmarks.fast_weights [--steps 200] [--batch 32] [--seed 0]``.
"""

import argparse
from typing import Any

import torch as th

from sb3_stpn import STPN

INPUTS, HIDDEN = 4, 64
SETTINGS: dict[str, dict[str, Any]] = {
    "paper (normalize, pre)": {},
    "pre, gamma_init 1e-5 (0.01x)": {"gamma_init": 1e-5},
    "pre, lambda_init (0, 0.5)": {"lambda_init": (0.0, 0.5)},
    "pre, clamp 0.1": {"clamp": 0.1},
    "pre, lambda_max 0.5": {"lambda_max": 0.5},
    "post": {"norm_time": "post"},
    "post, gamma_init 1e-5": {"norm_time": "post", "gamma_init": 1e-5},
    "post, lambda_max 0.5": {"norm_time": "post", "lambda_max": 0.5},
    "no normalisation": {"normalize": False},
    "no normalisation, clamp 1": {"normalize": False, "clamp": 1.0},
}
REPORTED_STEPS = (1, 10, 50, 100, 200)


def fast_to_slow_by_step(layer: STPN, steps: int, batch: int, seed: int) -> list[float]:
    """``||F_i|| / ||W_i||`` after each step, mean over neurons and sequences."""
    generator = th.Generator().manual_seed(seed)
    x = th.randn(steps, batch, INPUTS, generator=generator)
    state = layer.initial_state(batch)
    ratios = []
    with th.no_grad():
        for t in range(steps):
            _, state = layer(x[t : t + 1], state)
            fast = state[1][..., : layer.presynaptic_size]
            ratios.append((fast.norm(dim=-1) / layer.weight.norm(dim=-1)).mean().item())
    return ratios


def table(steps: int, batch: int, seed: int) -> str:
    """The markdown table: one row per setting, ``||F|| / ||W||`` at each reported step up to ``steps``."""
    reported = [step for step in REPORTED_STEPS if step <= steps]
    lines = ["| setting | " + " | ".join(f"step {step}" for step in reported) + " |", "| --- |" + " --- |" * len(reported)]
    for name, kwargs in SETTINGS.items():
        th.manual_seed(seed)
        ratios = fast_to_slow_by_step(STPN(INPUTS, HIDDEN, **kwargs), steps, batch, seed)
        lines.append(f"| {name} | " + " | ".join(f"{ratios[step - 1]:.2g}" for step in reported) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--steps", type=int, default=max(REPORTED_STEPS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"||F|| / ||W|| per neuron, fresh STPN({INPUTS}, {HIDDEN}), N(0, 1) inputs, {args.batch} sequences, seed {args.seed}"
    )
    print()
    print(table(args.steps, args.batch, args.seed))


if __name__ == "__main__":
    main()
