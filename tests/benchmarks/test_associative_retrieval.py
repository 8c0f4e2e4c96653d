"""The Associative Retrieval Task generator is well formed and the benchmark runs end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.associative_retrieval import N_LETTERS, QUERY_MARK, VOCAB_SIZE, main, make_dataset, one_hot, to_text


@pytest.mark.parametrize("n_pairs", [1, 4, 8])
def test_sequences_are_well_formed(n_pairs: int) -> None:
    tokens, answers = make_dataset(500, n_pairs, seed=3)
    assert tokens.shape == (500, 2 * n_pairs + 3) and answers.shape == (500,)
    for sequence, answer in zip(tokens, answers, strict=True):
        letters, digits = sequence[: 2 * n_pairs : 2], sequence[1 : 2 * n_pairs : 2] - N_LETTERS
        assert (letters < N_LETTERS).all() and len(set(letters)) == n_pairs
        assert ((digits >= 0) & (digits < 10)).all()
        assert (sequence[2 * n_pairs : 2 * n_pairs + 2] == QUERY_MARK).all()
        query = sequence[-1]
        assert query in letters
        # The answer is determined by the sequence: the digit right after the query letter
        assert answer == digits[list(letters).index(query)]


def test_dataset_is_reproducible_and_varied() -> None:
    tokens, answers = make_dataset(1000, 4, seed=0)
    again, _ = make_dataset(1000, 4, seed=0)
    assert np.array_equal(tokens, again)
    assert not np.array_equal(tokens, make_dataset(1000, 4, seed=1)[0])
    # Every digit is an answer about equally often and the query is any of the pairs
    assert np.bincount(answers, minlength=10).min() > 50
    query_positions = [list(row[:8:2]).index(row[-1]) for row in tokens]
    assert set(query_positions) == {0, 1, 2, 3}


def test_text_and_one_hot_encodings() -> None:
    tokens = np.array([[2, 35, 10, 34, 36, 36, 2]])
    assert to_text(tokens[0]) == "c9k8??c"
    x = one_hot(tokens)
    assert x.shape == (7, 1, VOCAB_SIZE) and (x.sum(dim=-1) == 1).all() and x[1, 0, 35] == 1


def test_benchmark_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "art.json"
    main(["--quick", "--seeds", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| STPN | 11 |" in printed and "| LSTM | 9 |" in printed and "| RNN | 20 |" in printed
    report = json.loads(out.read_text())
    assert report["table"] in printed
    for kind, result in report["results"].items():
        assert result["hidden_size"] == {"stpn": 11, "lstm": 9, "rnn": 20}[kind]
        assert [run["seed"] for run in result["runs"]] == [0, 1]
        for run in result["runs"]:
            assert 0 <= run["test_accuracy"] <= 1 and run["energy_per_step"] > 0
    # Counted with the readout: the paper's sizes match STPN and LSTM to within 7% (the RNN has 1390)
    stpn, lstm = report["results"]["stpn"]["parameters"], report["results"]["lstm"]["parameters"]
    assert (stpn, lstm) == (1715, 1828)
