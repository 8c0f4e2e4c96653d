"""The README's and the docs' commands, run as a user copies them but with a tiny budget, so that none goes stale.

Every line of a ```bash block in README.md and docs/**/*.md (not the results/ folder's records) that runs ``train.py``
or ``enjoy.py`` with ``python`` or ``.venv/bin/python`` (alone or after ``&&``, ``\\`` continuations joined) must
exit with status 0, and every ```python example of the docs pages must run. Only the budget shrinks, to one tiny
rollout (``-n``, ``--n-trials``, the rollout's size). The commands run in one folder, where a fixture first trains
the run and writes the study they refer to; the PostgreSQL ones run against a throw-away server.
"""

import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, python_blocks, run_script

DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").rglob("*.md")),
]
PYTHONS = ("python", ".venv/bin/python")
SCRIPTS = ("train.py", "enjoy.py")
OPTIMIZE = ("-optimize", "--optimize", "--optimize-hyperparameters")
# One rollout of 2 envs x 32 steps, one epoch; ppo_lstm has no sequence_length
SHRINK = ["n_envs:2", "n_steps:32", "batch_size:64", "n_epochs:1"]
STPN_SHRINK = [*SHRINK, "sequence_length:32"]
# What the documented PostgreSQL URL stands for: the throw-away server's database
POSTGRES_PLACEHOLDER = "postgresql://stpn:PASSWORD@db-host:5432/optuna"


def bash_lines(text: str) -> Iterator[tuple[int, str]]:
    """Each line of the text's ```bash blocks, with its line number and its ``\\`` continuations joined."""
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        start = start if pending else number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = ""


def doc_commands(wanted: Callable[[list[str]], bool]) -> dict[tuple[str, ...], list[str]]:
    """The documented Python commands (what follows ``python``) that ``wanted`` picks, each with the places shown."""
    commands: dict[tuple[str, ...], list[str]] = {}
    for path in DOCS:
        for number, line in bash_lines(path.read_text()):
            words = shlex.split(line, comments=True)
            parts: list[list[str]] = [[]]
            for word in words:
                if word == "&&":
                    parts.append([])
                else:
                    parts[-1].append(word)
            for part in parts:
                if len(part) >= 2 and part[0] in PYTHONS and wanted(part[1:]):
                    commands.setdefault(tuple(part[1:]), []).append(f"{path.relative_to(REPO)}:{number}")
    return commands


COMMANDS = doc_commands(lambda words: words[0] in SCRIPTS)
# rl_zoo3's plot modules (python -m rl_zoo3.plots.<name> ...)
PLOTS = doc_commands(lambda words: words[0] == "-m" and len(words) > 1 and words[1].startswith("rl_zoo3.plots."))


def doc_examples() -> dict[str, str]:
    """The docs pages' ```python examples by place (the README's are run on their own: its 20k-step quick start by
    test_readme_quick_start_runs, with a smaller budget, and its zoo-run loader by tests/test_train_enjoy.py)."""
    return {f"{path.relative_to(REPO)}:{number}": block for path in DOCS[1:] for number, block in python_blocks(path)}


EXAMPLES = doc_examples()
POSTGRES = {command: places for command, places in COMMANDS.items() if POSTGRES_PLACEHOLDER in " ".join(command)}
LOCAL = {command: places for command, places in COMMANDS.items() if command not in POSTGRES}


def with_value(args: list[str], spellings: tuple[str, ...], value: str) -> list[str]:
    """``args`` with the flag of these spellings set to ``value``: replaced where it is given, else added."""
    for index, arg in enumerate(args):
        if arg in spellings:
            return [*args[: index + 1], value, *args[index + 2 :]]
    return [*args, spellings[0], value]


def tiny(command: tuple[str, ...]) -> list[str]:
    """The command with a tiny budget: a few dozen steps (and one trial), a rollout of 2 envs x 32 steps."""
    script, *args = command
    if script == "enjoy.py":
        return [script, *with_value(args, ("-n", "--n-timesteps"), "50")]
    args = with_value(args, ("-n", "--n-timesteps"), "64")
    if any(arg in OPTIMIZE for arg in args):
        args = with_value(args, ("--n-trials",), "1")
    algo = args[args.index("--algo") + 1] if "--algo" in args else "ppo_stpn"
    shrink = STPN_SHRINK if algo == "ppo_stpn" else SHRINK
    # The documented overrides come after the shrinking ones, so that they win
    at = next((index for index, arg in enumerate(args) if arg in ("--hyperparams", "-params")), None)
    args = [*args, "--hyperparams", *shrink] if at is None else [*args[: at + 1], *shrink, *args[at + 1 :]]
    return [script, *args]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding what the commands load: the run logs/ppo_stpn/CartPoleNoVel-v1_1 (with a best model) and
    trial 0 of the default study."""
    folder = tmp_path_factory.mktemp("docs")
    train = ["train.py", "--env", "CartPoleNoVel-v1", "--seed", "0"]
    run_script(*tiny((*train, "--eval-freq", "64", "--eval-episodes", "1")), cwd=folder)
    assert (folder / "logs" / "ppo_stpn" / "CartPoleNoVel-v1_1" / "best_model.zip").is_file()
    run_script(*tiny((*train, "--optimize")), cwd=folder)
    return folder


def test_the_docs_show_commands() -> None:
    """An empty scan must fail: the README and docs show this many distinct commands, two of them for PostgreSQL."""
    assert len(LOCAL) >= 12 and len(POSTGRES) >= 2, COMMANDS
    assert len(EXAMPLES) >= 2, EXAMPLES
    assert len(PLOTS) >= 2, PLOTS
    assert any("README.md" in place for places in COMMANDS.values() for place in places)


def test_tiny_keeps_the_documented_flags() -> None:
    """Only the budget changes: a documented value stays, and documented overrides win over the shrinking ones."""
    command = ("train.py", "--env", "X", "-n", "200000", "--seed", "3", "--hyperparams", "n_envs:4")
    assert tiny(command) == ["train.py", "--env", "X", "-n", "64", "--seed", "3", "--hyperparams", *STPN_SHRINK, "n_envs:4"]
    assert tiny(("train.py", "--algo", "ppo_lstm", "--optimize"))[-7:] == ["--n-trials", "1", "--hyperparams", *SHRINK]
    assert tiny(("enjoy.py", "--record", "-n", "1000")) == ["enjoy.py", "--record", "-n", "50"]


@pytest.mark.parametrize("command", list(LOCAL), ids=[" ".join(places) for places in LOCAL.values()])
def test_documented_command_runs(command: tuple[str, ...], workdir: Path) -> None:
    run_script(*tiny(command), cwd=workdir)


@pytest.mark.parametrize("example", list(EXAMPLES.values()), ids=list(EXAMPLES))
def test_documented_python_example_runs(example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "<example>", "exec"), {})


@pytest.fixture(scope="module")
def plots_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a run of each algo the documented plots compare, evaluated on 2 episodes (rl_zoo3's all_plots
    cannot average one run's one episode)."""
    folder = tmp_path_factory.mktemp("plots")
    for algo in ("ppo_stpn", "ppo_lstm"):
        train = ("train.py", "--algo", algo, "--env", "CartPoleNoVel-v1", "--seed", "0")
        run_script(*tiny((*train, "--eval-freq", "32", "--eval-episodes", "2")), cwd=folder)
    return folder


@pytest.mark.parametrize("command", list(PLOTS), ids=[" ".join(places) for places in PLOTS.values()])
def test_documented_plot_command_runs(command: tuple[str, ...], plots_workdir: Path) -> None:
    """Each plot command reads the runs and exits 0; all_plots also writes the results it tabulated."""
    result = run_script(*command, cwd=plots_workdir)
    if command[1] == "rl_zoo3.plots.all_plots":
        output = command[command.index("-o") + 1]
        assert (plots_workdir / f"{output}.pkl").is_file() and "CartPoleNoVel-v1" in result.stdout


# The README's quick start as written, but for its budget: these pieces become these
QUICK_START_SHRINK = {"model.learn(20_000)": "model.learn(256)", "n_eval_episodes=10": "n_eval_episodes=1"}


def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick start trains, saves, loads and evaluates; only its budget shrinks (and must be found to shrink)."""
    (quick_start,) = [block for _, block in python_blocks(REPO / "README.md") if "model.learn(" in block]
    for written, shrunk in QUICK_START_SHRINK.items():
        assert written in quick_start, f"the README's quick start no longer says {written}: update QUICK_START_SHRINK"
        quick_start = quick_start.replace(written, shrunk)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(quick_start, "README.md quick start", "exec"), namespace)
    assert (tmp_path / "stpn_cartpole.zip").is_file() and namespace["model"].num_timesteps == 256  # the saved count
    assert namespace["mean_reward"] >= 1.0


def test_every_relative_link_of_the_markdown_files_resolves() -> None:
    """Files move (the results out of docs/, the configs into the package): a link left behind fails here."""
    pages = [path for path in REPO.rglob("*.md") if not {".venv", ".git", "logs", "build"} & set(path.parts)]
    links = [
        (page, target.split("#")[0])
        for page in pages
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text())
        if not re.match(r"[a-z]+:|#", target)
    ]
    broken = [f"{page.relative_to(REPO)}: {target}" for page, target in links if not (page.parent / target).exists()]
    assert len(links) > 100 and not broken, broken


def test_nothing_cites_a_file_outside_the_repository() -> None:
    """The model is stated beside the op (sb3_stpn/ops/stpn/README.md); ``shared/`` is not in the repository or wheel."""
    sources = [*REPO.glob("*.md"), *REPO.glob("*.py")]
    for folder in ("sb3_stpn", "tests", "benchmarks", "docs", "results", "scripts"):
        sources += [path for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".md", ".cpp", ".yml", ".sh")]
    citing = [
        str(path.relative_to(REPO))
        for path in sources
        if "history" not in path.parts and path != Path(__file__) and "shared/" in path.read_text()  # this file names it
    ]
    assert len(sources) > 50 and not citing, citing


def test_documented_postgres_commands_run(postgres_server: str, workdir: Path) -> None:
    """The PostgreSQL commands in the order shown (the trial they train is the one the search before wrote), on the
    throw-away server's database instead of the placeholder."""
    url = f"{postgres_server}/postgres"
    for command in POSTGRES:
        run_script(*tiny(tuple(arg.replace(POSTGRES_PLACEHOLDER, url) for arg in command)), cwd=workdir)
