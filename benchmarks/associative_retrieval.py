"""Associative Retrieval Task (Ba et al. 2016) with parameter-matched STPN, LSTM and RNN (STPN paper's sizes).

A sequence shows K pairs of a distinct letter and a digit, then ``??`` and a query letter taken
from the pairs, e.g. ``c9k8j3f1??c``; the answer is the digit paired with the query (9). Each
model reads the one-hot sequence (26 letters + 10 digits + '?') and a linear readout of its last
output predicts the digit. All models get the same data, optimiser (Adam) and budget; the script
prints a markdown table of test accuracy (mean ± std over seeds), parameter counts and the mean
synaptic energy per step (``sb3_stpn/ops/stpn/README.md``) on the test set, and writes everything as JSON.

Run: ``python -m benchmarks.associative_retrieval [--quick] [--epochs N] [--seeds N] [--n-train N]``.
"""

import argparse
import json
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch as th
from torch import nn

from sb3_stpn import STPN
from sb3_stpn.common.energy import rnn_sequence_energy

N_LETTERS, N_DIGITS = 26, 10
QUERY_MARK = N_LETTERS + N_DIGITS  # token of '?'
VOCAB_SIZE = QUERY_MARK + 1
# The STPN paper's parameter-matched hidden sizes
HIDDEN_SIZES = {"stpn": 11, "lstm": 9, "rnn": 20}


def make_dataset(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """
    ``n`` ART sequences with ``n_pairs`` letter-digit pairs, reproducible from ``seed``.

    :return: tokens (n, 2 * n_pairs + 3) (letters 0-25, digits 26-35, '?' 36) and answers (n,) in 0-9.
    """
    if not 1 <= n_pairs <= N_LETTERS:
        raise ValueError(f"n_pairs must be in 1..{N_LETTERS}, got {n_pairs}")
    rng = np.random.default_rng(seed)
    letters = rng.random((n, N_LETTERS)).argsort(axis=1)[:, :n_pairs]
    digits = rng.integers(0, N_DIGITS, size=(n, n_pairs))
    query = rng.integers(0, n_pairs, size=n)
    pairs = np.stack([letters, digits + N_LETTERS], axis=2).reshape(n, 2 * n_pairs)
    rows = np.arange(n)
    tokens = np.concatenate([pairs, np.full((n, 2), QUERY_MARK), letters[rows, query, None]], axis=1)
    return tokens, digits[rows, query]


def to_text(tokens: np.ndarray) -> str:
    """One sequence as in Ba et al. 2016, e.g. ``c9k8j3f1??c``."""
    alphabet = string.ascii_lowercase + string.digits + "?"
    return "".join(alphabet[token] for token in tokens)


def one_hot(tokens: np.ndarray) -> th.Tensor:
    """Tokens (n, T) as one-hot inputs (T, n, VOCAB_SIZE), time first as the STPN layer takes them."""
    return nn.functional.one_hot(th.as_tensor(tokens).T, VOCAB_SIZE).float()


class SequenceClassifier(nn.Module):
    """A recurrent memory (STPN, LSTM or RNN) read by a linear layer after the last step."""

    def __init__(self, kind: str, hidden_size: int):
        super().__init__()
        memories = {"stpn": STPN, "lstm": nn.LSTM, "rnn": nn.RNN}
        self.memory = memories[kind](VOCAB_SIZE, hidden_size)
        self.readout = nn.Linear(hidden_size, N_DIGITS)

    def forward(self, x: th.Tensor) -> th.Tensor:
        """Digit logits (n, 10) for inputs (T, n, VOCAB_SIZE); every memory starts from a zero state."""
        return self.readout(self.memory(x)[0][-1])

    @th.no_grad()
    def energy(self, x: th.Tensor) -> float:
        """Mean synaptic energy per sample and step of the memory on ``x``."""
        if isinstance(self.memory, STPN):
            self.memory.record_energy = True
            self.memory(x)
            self.memory.record_energy = False
            return self.memory.last_energy.mean().item()
        return rnn_sequence_energy(self.memory, x, None, self.memory(x)[0]).mean().item()


@dataclass
class Budget:
    """What every model gets: the same data sizes, optimiser settings and number of updates."""

    n_train: int
    n_test: int
    n_pairs: int
    epochs: int
    batch_size: int
    learning_rate: float


def accuracy(model: SequenceClassifier, x: th.Tensor, y: th.Tensor) -> float:
    with th.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def train_one(kind: str, seed: int, budget: Budget) -> dict:
    """Train one model on the seed's data with Adam; report its test accuracy per epoch and its energy."""
    tokens, answers = make_dataset(budget.n_train + budget.n_test, budget.n_pairs, seed)
    x, y = one_hot(tokens), th.as_tensor(answers)
    x_train, y_train, x_test, y_test = x[:, : budget.n_train], y[: budget.n_train], x[:, budget.n_train :], y[budget.n_train :]
    th.manual_seed(seed)
    model = SequenceClassifier(kind, HIDDEN_SIZES[kind])
    optimizer = th.optim.Adam(model.parameters(), lr=budget.learning_rate)
    start, test_curve = time.perf_counter(), []
    for _ in range(budget.epochs):
        for batch in th.randperm(budget.n_train).split(budget.batch_size):
            loss = nn.functional.cross_entropy(model(x_train[:, batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        test_curve.append(accuracy(model, x_test, y_test))
    return {
        "seed": seed,
        "test_accuracy": test_curve[-1],
        "train_accuracy": accuracy(model, x_train, y_train),
        "test_accuracy_per_epoch": test_curve,
        "energy_per_step": model.energy(x_test),
        "seconds": time.perf_counter() - start,
    }


def parameter_count(kind: str) -> int:
    return sum(p.numel() for p in SequenceClassifier(kind, HIDDEN_SIZES[kind]).parameters())


def summarise(runs: list[dict], key: str) -> tuple[float, float]:
    values = np.array([run[key] for run in runs])
    return float(values.mean()), float(values.std())


def markdown_table(results: dict) -> str:
    lines = [
        "| model | hidden | parameters | test accuracy | train accuracy | energy / step | seconds / seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, result in results.items():
        cells = [kind.upper(), str(result["hidden_size"]), str(result["parameters"])]
        for key, fmt in [("test_accuracy", ".3f"), ("train_accuracy", ".3f"), ("energy_per_step", ".2f"), ("seconds", ".0f")]:
            mean, std = summarise(result["runs"], key)
            cells.append(f"{mean:{fmt}} ± {std:{fmt}}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for tests")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training set (default 40; quick 1)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model; a seed fixes the data and the init")
    parser.add_argument("--n-train", type=int, default=None, help="training sequences (default 20000; quick 256)")
    parser.add_argument("--n-test", type=int, default=None, help="test sequences (default 2000; quick 128)")
    parser.add_argument("--pairs", type=int, default=4, help="letter-digit pairs per sequence (4: 'c9k8j3f1??c')")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate, the same for every model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", choices=list(HIDDEN_SIZES), default=list(HIDDEN_SIZES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/art.json"))
    args = parser.parse_args(argv)
    defaults = (1, 256, 128) if args.quick else (40, 20000, 2000)
    epochs, n_train, n_test = (
        given if given is not None else default
        for given, default in zip((args.epochs, args.n_train, args.n_test), defaults, strict=True)
    )
    budget = Budget(n_train, n_test, args.pairs, epochs, args.batch_size, args.lr)
    th.set_num_threads(args.threads)

    print(f"Example: {to_text(make_dataset(1, args.pairs, 0)[0][0])}  budget: {budget}")
    start = time.perf_counter()
    results = {}
    for kind in args.models:
        runs = []
        for seed in range(args.seeds):
            runs.append(train_one(kind, seed, budget))
            print(f"{kind} seed {seed}: test accuracy {runs[-1]['test_accuracy']:.3f} ({runs[-1]['seconds']:.0f} s)")
        results[kind] = {"hidden_size": HIDDEN_SIZES[kind], "parameters": parameter_count(kind), "runs": runs}
    table = markdown_table(results)
    print(f"\n{table}\n\nwall time: {time.perf_counter() - start:.0f} s")
    report = {"budget": asdict(budget), "seeds": args.seeds, "results": results, "table": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
