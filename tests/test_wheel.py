"""The wheel as a user gets it: `pip wheel .`, installed (not editable) into a fresh virtualenv, trains from elsewhere."""

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch as th

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
ENV = "CartPoleNoVel-v1"
# What a checkout holds besides the sources: never part of a build
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "logs", ".torch_ext", "__pycache__")


# The fresh environment only: no PYTHONPATH leading to a checkout; one thread, as every test; no display
ENVIRONMENT = {
    **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
    "OMP_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, env=ENVIRONMENT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.skipif(tomllib is None, reason="reads pyproject.toml with tomllib (Python >= 3.11)")
def test_every_package_lies_where_its_name_says() -> None:
    """setuptools installs an editable checkout as one path entry only when no package folder is remapped; a remap
    (as zoo_configs/ once was) makes it use an import hook and warn about same-named folders at every set-up."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"": "."}
    misplaced = [name for name in setuptools["packages"] if not (REPO / name.replace(".", "/")).is_dir()]
    assert len(setuptools["packages"]) > 5 and not misplaced, misplaced


@pytest.mark.slow  # 1-2 minutes each, mostly installing torch; .ci/run runs them after the default suite
# "pinned": the torch the suite runs against, installed first as scripts/setup.sh does; "newest": whatever torch pip
# resolves for `pip install sb3-stpn` within the package's range (what a user gets; on Linux x86_64 a CUDA build)
@pytest.mark.parametrize("torch_choice", ["pinned", "newest"])
def test_wheel_installs_and_trains_from_another_folder(tmp_path: Path, torch_choice: str) -> None:
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)  # a clean tree: no stale build/ leaks into the wheel
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(tmp_path / "dist")], cwd=source)
    (wheel,) = (tmp_path / "dist").glob("sb3_stpn-*.whl")
    # The op's statement of the model ships beside it (its docstrings cite it), and so does the kernel's source
    with zipfile.ZipFile(wheel) as archive:
        assert {"sb3_stpn/ops/stpn/README.md", "sb3_stpn/ops/stpn/csrc/stpn.cpp"} <= set(archive.namelist())

    environment = tmp_path / "venv"
    venv.create(environment)  # without pip: this pip installs into it (--python), which saves seconds
    python = environment / "bin" / "python"
    # Skipping the bytecode compilation of torch saves most of an install's time
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile"]
    pinned = th.__version__.split("+")[0]
    if torch_choice == "pinned":
        run([*install, f"torch=={pinned}"], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # The core install first: its console scripts exist, and say in one line that they need the zoo extra
    run([*install, str(wheel)], cwd=tmp_path)
    core = subprocess.run([environment / "bin" / "stpn-train"], cwd=elsewhere, env=ENVIRONMENT, capture_output=True, text=True)
    assert core.returncode == 1 and core.stderr == (
        'error: rl_zoo3 is not installed: stpn-train and stpn-enjoy need the zoo extra; pip install "sb3-stpn[zoo]"\n'
    ), core.stderr
    run([*install, f"{wheel}[zoo]"], cwd=tmp_path)

    # Not activated: the venv's bin is not on PATH, as for `.venv/bin/stpn-train`
    out = run([str(environment / "bin" / "stpn-train"), "--env", ENV, "-n", "256", "--eval-freq", "-1",
               "--hyperparams", "n_envs:1", "n_steps:64", "batch_size:64", "n_epochs:1"], cwd=elsewhere)  # fmt: skip
    assert "site-packages/sb3_stpn/zoo_configs/ppo_stpn.yml" in out  # the installed configs, not the checkout's
    assert (elsewhere / "logs" / "ppo_stpn" / f"{ENV}_1" / f"{ENV}.zip").is_file()
    # rl_zoo3's plots need rl_zoo3[plots] (the zoo extra; headless: matplotlib's Agg backend, nothing shown)
    run([str(python), "-m", "rl_zoo3.plots.plot_train", "-a", "ppo_stpn", "-e", ENV, "-f", "logs/"], cwd=elsewhere)
    # ... whose dependencies are rl_zoo3's own: rliable too, and the pandas it declares (< 3)
    run([str(python), "-c", "import pandas, rliable; assert int(pandas.__version__.split('.')[0]) < 3"], cwd=elsewhere)
    installed = run([str(python), "-c", "import torch; print(torch.__version__)"], cwd=elsewhere).strip()
    newer_or_same = tuple(map(int, installed.split("+")[0].split(".")[:2])) >= tuple(map(int, pinned.split(".")[:2]))
    assert installed.startswith(pinned) if torch_choice == "pinned" else newer_or_same, installed
    if shutil.which("c++"):  # the kernel's source is in the wheel and builds (or loads from the shared cache) ...
        kernel = "from sb3_stpn.ops.stpn import cpp_kernel_available; assert cpp_kernel_available()"
        run([str(python), "-c", kernel], cwd=elsewhere)
        # ... and agrees with the plain PyTorch path, forward and backward, with this torch
        agree = (
            "import os, torch; from sb3_stpn import STPN; torch.manual_seed(0)\n"
            "layer = STPN(5, 7).double(); x = torch.randn(6, 3, 5, dtype=torch.float64)\n"
            "def run(kernel):\n"
            "    os.environ['SB3_STPN_KERNEL'] = kernel; layer.zero_grad()\n"
            "    out = layer(x)[0]; out.square().sum().backward()\n"
            "    return [out.detach(), *[p.grad.clone() for p in layer.parameters()]]\n"
            "cpp, reference = run('cpp'), run('reference')\n"
            "assert len(cpp) > 3 and all(torch.allclose(a, b) for a, b in zip(cpp, reference))\n"
        )
        run([str(python), "-c", agree], cwd=elsewhere)
