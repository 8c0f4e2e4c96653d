"""Building the C++ kernel: one cache folder per source, torch version and CPU; one line before a build; ninja found."""

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import torch as th
from torch.utils import cpp_extension

from sb3_stpn.ops.stpn import fused_cpp

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def extensions_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path


def test_cache_folder_is_keyed_by_what_the_build_depends_on(extensions_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One folder per source, torch, CPU, compiler and environment (another virtualenv's torch headers); another
    checkout of the same source shares the folder."""

    def folder_with(target: object, name: str, value: object) -> Path:
        with monkeypatch.context() as patch:
            patch.setattr(target, name, value)
            return fused_cpp.cpp_build_directory()

    def folder_with_compiler(compiler: str) -> Path:
        with monkeypatch.context() as patch:
            patch.setenv("CXX", compiler)
            return fused_cpp.cpp_build_directory()

    monkeypatch.delenv("CXX", raising=False)
    here = fused_cpp.cpp_build_directory()
    assert here.parent == extensions_root and here == fused_cpp.cpp_build_directory()
    assert folder_with_compiler("c++") == here  # torch's default compiler
    edited, checkout = extensions_root / "edited" / "stpn.cpp", extensions_root / "checkout" / "stpn.cpp"
    for copy in (edited, checkout):
        copy.parent.mkdir()
        shutil.copyfile(fused_cpp.CPP_SOURCE, copy)
    with edited.open("a") as file:
        file.write("// edited\n")
    other_venv = ["/other/venv/lib/python3.11/site-packages/torch/include"]
    others = {
        folder_with(th, "__version__", "9.9.9"),
        folder_with(fused_cpp, "_cpu_instruction_set", lambda: "x86_64 flags: sse2"),
        folder_with(fused_cpp, "CPP_SOURCE", edited),
        folder_with(cpp_extension, "include_paths", lambda *args, **kwargs: other_venv),
        folder_with_compiler("clang++"),
    }
    assert len(others) == 5 and here not in others
    assert folder_with(fused_cpp, "CPP_SOURCE", checkout) == here


def test_cpu_instruction_set_names_the_cpu_features() -> None:
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo")
    assert any(flag in fused_cpp._cpu_instruction_set().split() for flag in ("sse2", "avx2", "fp", "asimd"))


def test_build_says_so_in_one_line_and_reuses_the_cache(
    extensions_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in for torch's loader records the call and leaves the library, as a finished build does."""
    calls: list[dict[str, Any]] = []

    def fake_load(**kwargs: Any) -> None:
        calls.append(kwargs)
        Path(kwargs["build_directory"], kwargs["name"] + cpp_extension.LIB_EXT).write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    fused_cpp._build_cpp_extension()
    assert capsys.readouterr().err.splitlines() == [
        f"sb3_stpn: building the C++ STPN kernel in {fused_cpp.cpp_build_directory()} (about a minute, once)"
    ]
    build_directory = Path(calls[0]["build_directory"])
    assert build_directory == fused_cpp.cpp_build_directory() and calls[0]["name"] == build_directory.name
    assert Path(calls[0]["sources"][0]).read_text() == fused_cpp.CPP_SOURCE.read_text()
    assert Path(calls[0]["sources"][0]).parent == build_directory  # a copy: every checkout builds the same path
    fused_cpp._build_cpp_extension()
    assert capsys.readouterr().err == "" and len(calls) == 2


def test_ninja_of_the_package_is_found_without_an_activated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch runs `ninja` from PATH; `.venv/bin/python train.py` does not put the venv's bin on it."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert shutil.which("ninja") is None
    with fused_cpp._ninja_on_path():
        assert shutil.which("ninja") is not None
    assert os.environ["PATH"] == "/nonexistent"


# A process that builds with torch's loader, its compile step stubbed out (only the locking around it is torch's)
STUBBED_BUILD = """
from torch.utils import cpp_extension
from sb3_stpn.ops.stpn import fused_cpp
cpp_extension._write_ninja_file_and_build_library = lambda **kwargs: None
cpp_extension._import_module_from_library = lambda *args: None
fused_cpp._build_cpp_extension()
print("built")
"""


def run_stubbed_build(extensions_root: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions_root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", STUBBED_BUILD], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_one(extensions_root: Path) -> None:
    """torch's lock file outlives a build killed by SIGKILL/SIGTERM/the OOM killer; the next build must not wait on it."""
    build_directory = fused_cpp.cpp_build_directory()
    build_directory.mkdir(mode=0o700)
    (build_directory / "lock").touch()  # what the killed build left
    result = run_stubbed_build(extensions_root, timeout=45)
    assert result.returncode == 0 and result.stdout.strip() == "built", result.stderr


def test_waiting_for_a_live_build_times_out_naming_the_lock(
    extensions_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build_directory = fused_cpp.cpp_build_directory()
    build_directory.mkdir(mode=0o700)
    monkeypatch.setattr(fused_cpp, "BUILD_LOCK_TIMEOUT_S", 0.5)
    with open(build_directory / "build.flock", "a") as held:  # another open file: a second holder, as in another process
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError, match=f"waited 0.5 s for {build_directory / 'build.flock'}"):
            fused_cpp._build_cpp_extension()
    assert f"waiting for another process building the C++ STPN kernel ({build_directory / 'build.flock'})" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_a_real_build_killed_midway_leaves_the_next_one_working(extensions_root: Path) -> None:
    """The issue's repro: SIGKILL the first build while it compiles (torch's lock taken), then build again."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions_root), "PYTHONPATH": str(REPO)}
    build = [sys.executable, "-c", "from sb3_stpn.ops.stpn import cpp_kernel_available as a; assert a()"]
    first = subprocess.Popen(build, env=env, stderr=subprocess.DEVNULL)
    lock = fused_cpp.cpp_build_directory() / "lock"
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()
    first.wait(timeout=10)
    assert lock.exists(), "the build ended before it could be killed"
    subprocess.run(build, env=env, check=True, timeout=300)


def processes_in(folder: Path) -> list[int]:
    """The pids whose working directory is ``folder`` (ninja and the compilers torch runs there), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        with suppress(OSError):
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(folder.resolve()):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="reads the processes' folders from Linux's /proc")
def test_a_build_killed_takes_its_compiler_with_it(extensions_root: Path) -> None:
    """SIGKILL of the first build left ninja and the compiler writing into the cache, without the lock, ~34 s more."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions_root), "PYTHONPATH": str(REPO)}
    build = subprocess.Popen([sys.executable, "-c", "from sb3_stpn.ops.stpn import cpp_kernel_available as a; a()"],
                             env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    folder = fused_cpp.cpp_build_directory()
    deadline = time.monotonic() + 120
    while not processes_in(folder):  # ninja has started the compiler
        assert build.poll() is None and time.monotonic() < deadline, "the build ended before it was seen compiling"
        time.sleep(0.05)
    build.kill()
    build.wait(timeout=10)
    deadline = time.monotonic() + 10
    while processes_in(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(folder) == []


def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """torch's loader replaced by one that records its call and leaves an empty library, as a finished build does."""
    calls: list[dict[str, Any]] = []

    def fake_load(**kwargs: Any) -> None:
        calls.append({**kwargs, "source": Path(kwargs["sources"][0]).read_bytes()})
        Path(kwargs["build_directory"], kwargs["name"] + cpp_extension.LIB_EXT).write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    return calls


def test_the_cache_folder_is_private(extensions_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_build(monkeypatch)
    fused_cpp._build_cpp_extension()
    assert stat.S_IMODE(fused_cpp.cpp_build_directory().stat().st_mode) == 0o700


@pytest.mark.parametrize("fault", ["group-writable", "another user's", "a symbolic link"])
def test_a_cache_folder_others_could_write_is_refused(
    fault: str, extensions_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """In a shared TORCH_EXTENSIONS_DIR another account could plant the code this process builds and loads."""
    calls = fake_build(monkeypatch)
    folder = fused_cpp.cpp_build_directory()
    if fault == "a symbolic link":
        folder.symlink_to(tmp_path_factory.mktemp("elsewhere"))
    else:
        folder.mkdir(mode=0o700)
    if fault == "group-writable":
        folder.chmod(0o770)
    if fault == "another user's":
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another user")
        os.chown(folder, 12345, 12345)
    expected = {
        "group-writable": "is writable by group or others",
        "another user's": "belongs to uid 12345",
        "a symbolic link": "is a symbolic link",
    }[fault]
    with pytest.raises(PermissionError, match=f"refusing the kernel cache folder {folder}, which {expected}"):
        fused_cpp._build_cpp_extension()
    assert calls == []


def test_a_planted_source_is_replaced_and_its_library_rebuilt(
    extensions_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = fake_build(monkeypatch)
    folder = fused_cpp.cpp_build_directory()
    folder.mkdir(mode=0o700)
    (folder / "stpn.cpp").write_text("// planted\n")
    library = folder / f"{folder.name}{cpp_extension.LIB_EXT}"
    library.write_bytes(b"built from the planted source")
    fused_cpp._build_cpp_extension()
    assert calls[0]["source"] == fused_cpp.CPP_SOURCE.read_bytes() and library.read_bytes() == b""
    assert "differs from the package's kernel source" in capsys.readouterr().err


def test_the_copy_of_the_source_follows_no_planted_link(extensions_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old copy went through the predictable stpn.<pid>.tmp: a link planted there redirected the write."""
    fake_build(monkeypatch)
    folder = fused_cpp.cpp_build_directory()
    folder.mkdir(mode=0o700)
    victim = extensions_root / "victim"
    victim.write_text("must stay")
    (folder / f"stpn.{os.getpid()}.tmp").symlink_to(victim)
    fused_cpp._build_cpp_extension()
    assert victim.read_text() == "must stay"
    assert (folder / "stpn.cpp").read_bytes() == fused_cpp.CPP_SOURCE.read_bytes()


@pytest.mark.parametrize("sticky", [False, True])
def test_a_parent_others_may_write_without_the_sticky_bit_is_refused(
    sticky: bool, extensions_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a world-writable TORCH_EXTENSIONS_DIR another user can rename the checked folder and plant one of theirs;
    the sticky bit (as on /tmp) forbids renaming what one does not own."""
    calls = fake_build(monkeypatch)
    extensions_root.chmod(0o777 | (stat.S_ISVTX if sticky else 0))
    if sticky:
        fused_cpp._build_cpp_extension()
        assert len(calls) == 1
    else:
        with pytest.raises(PermissionError, match=f"its parent {extensions_root} lets another account rename it"):
            fused_cpp._build_cpp_extension()
        assert calls == []


def test_a_folder_swapped_while_waiting_for_the_lock_is_refused(
    extensions_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is checked again, through a descriptor, once the lock is held: a swap during the wait is caught."""
    calls = fake_build(monkeypatch)
    folder = fused_cpp.cpp_build_directory()
    build_lock = fused_cpp._build_lock

    def swapped_while_waiting(build_directory: Path) -> Any:
        folder.rename(extensions_root / "checked")
        folder.mkdir(mode=0o700)  # another folder of the same name, as another account would plant
        return build_lock(build_directory)

    monkeypatch.setattr(fused_cpp, "_build_lock", swapped_while_waiting)
    with pytest.raises(PermissionError, match=f"refusing the kernel cache folder {folder}, which was replaced after"):
        fused_cpp._build_cpp_extension()
    assert calls == []


@pytest.mark.parametrize("damage", ["truncated", "emptied", "unrecorded"])
def test_a_damaged_library_is_rebuilt_before_it_is_loaded(
    damage: str, extensions_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loading a truncated library can kill the process (SIGBUS), and an empty one meant the slow path for ever: a
    library that is not the one the cache recorded is removed first, so that the load rebuilds it."""
    loaded: list[bytes] = []

    def load(**kwargs: Any) -> None:
        library = Path(kwargs["build_directory"], kwargs["name"] + cpp_extension.LIB_EXT)
        if not library.exists():
            library.write_bytes(b"built library")
        loaded.append(library.read_bytes())

    monkeypatch.setattr(cpp_extension, "load", load)
    fused_cpp._build_cpp_extension()
    folder = fused_cpp.cpp_build_directory()
    library = folder / f"{folder.name}{cpp_extension.LIB_EXT}"
    if damage == "unrecorded":
        library.with_name(f"{library.name}.sha256").unlink()  # not built by this cache as it is now
    else:
        library.write_bytes(b"built" if damage == "truncated" else b"")
    capsys.readouterr()
    fused_cpp._build_cpp_extension()
    assert loaded == [b"built library", b"built library"]
    assert f"sb3_stpn: {library} is not the library this cache built; rebuilding it" in capsys.readouterr().err
    fused_cpp._build_cpp_extension()  # now recorded: loaded as it is
    assert capsys.readouterr().err == "" and len(loaded) == 3


def test_a_library_that_fails_to_load_is_rebuilt_once_then_named(
    extensions_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[bool] = []
    failures = {"left": 1}

    def load(**kwargs: Any) -> None:
        library = Path(kwargs["build_directory"], kwargs["name"] + cpp_extension.LIB_EXT)
        attempts.append(library.exists())
        library.write_bytes(b"built library")
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(f"{library}: file too short")

    monkeypatch.setattr(cpp_extension, "load", load)
    folder = fused_cpp.cpp_build_directory()
    folder.mkdir(mode=0o700)
    (folder / f"{folder.name}{cpp_extension.LIB_EXT}").write_bytes(b"")
    (folder / f"{folder.name}{cpp_extension.LIB_EXT}.sha256").write_text(hashlib.sha256(b"").hexdigest())
    fused_cpp._build_cpp_extension()  # the recorded library fails to load: removed, rebuilt, loaded
    assert attempts == [True, False]
    attempts.clear()
    failures["left"] = 2  # fails even when rebuilt: one error naming the folder
    with pytest.raises(RuntimeError, match=f"the C\\+\\+ kernel in {folder} does not build or load: .*file too short"):
        fused_cpp._build_cpp_extension()
    assert attempts == [True, False]
