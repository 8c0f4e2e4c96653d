"""Building the C++ kernel: one cache folder per source, torch version and CPU; one line before a build; ninja found."""

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch as th
from torch.utils import cpp_extension

from sb3_stpn.common import stpn_kernel


@pytest.fixture
def extensions_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path


def test_cache_folder_is_keyed_by_source_torch_and_cpu(extensions_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def folder_with(target: object, name: str, value: object) -> Path:
        with monkeypatch.context() as patch:
            patch.setattr(target, name, value)
            return stpn_kernel.cpp_build_directory()

    here = stpn_kernel.cpp_build_directory()
    assert here.parent == extensions_root and here == stpn_kernel.cpp_build_directory()
    edited = extensions_root / "stpn.cpp"
    edited.write_text(stpn_kernel.CPP_SOURCE.read_text() + "\n// edited\n")
    others = {
        folder_with(th, "__version__", "9.9.9"),
        folder_with(stpn_kernel, "_cpu_instruction_set", lambda: "x86_64 flags: sse2"),
        folder_with(stpn_kernel, "CPP_SOURCE", edited),
    }
    assert len(others) == 3 and here not in others


def test_cpu_instruction_set_names_the_cpu_features() -> None:
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo")
    assert any(flag in stpn_kernel._cpu_instruction_set().split() for flag in ("sse2", "avx2", "fp", "asimd"))


def test_build_says_so_in_one_line_and_reuses_the_cache(
    extensions_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in for torch's loader records the call and leaves the library, as a finished build does."""
    calls: list[dict[str, Any]] = []

    def fake_load(**kwargs: Any) -> None:
        calls.append(kwargs)
        Path(kwargs["build_directory"], kwargs["name"] + cpp_extension.LIB_EXT).write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    stpn_kernel._build_cpp_extension()
    assert capsys.readouterr().err.splitlines() == [
        f"sb3_stpn: building the C++ STPN kernel in {stpn_kernel.cpp_build_directory()} (about a minute, once)"
    ]
    build_directory = Path(calls[0]["build_directory"])
    assert build_directory == stpn_kernel.cpp_build_directory() and calls[0]["name"] == build_directory.name
    assert Path(calls[0]["sources"][0]).read_text() == stpn_kernel.CPP_SOURCE.read_text()
    assert Path(calls[0]["sources"][0]).parent == build_directory  # a copy: every checkout builds the same path
    stpn_kernel._build_cpp_extension()
    assert capsys.readouterr().err == "" and len(calls) == 2


def test_ninja_of_the_package_is_found_without_an_activated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch runs `ninja` from PATH; `.venv/bin/python train.py` does not put the venv's bin on it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert shutil.which("ninja") is None
    with stpn_kernel._ninja_on_path():
        assert shutil.which("ninja") is not None
    assert os.environ["PATH"] == "/nonexistent"
