"""The ``cpp`` path: the C++ kernel ``csrc/stpn.cpp``, built at first use into a locked, private cache folder."""

import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import torch as th

from sb3_stpn.ops.stpn.config import StpnConfig, StpnGradients, StpnParams, raise_if_diverged

logger = logging.getLogger(__name__)

CPP_SOURCE = Path(__file__).parent / "csrc" / "stpn.cpp"
# Each thread recomputes one sample's segment (StpnBackend)
PER_BATCH_SEGMENT = False


@functools.cache
def _cpp_ops() -> Any:
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


def _build_cpp_extension() -> Any:
    """
    Load the C++ kernel, building it first (about a minute, said in one line) if its cache folder has none.

    A library that is not byte for byte the one this cache built (truncated or emptied by a full disk or a kill, or
    replaced) is rebuilt before anything loads it: loading a truncated library can kill the process (SIGBUS). A library
    that fails to load is rebuilt once; every message names the cache folder.
    """
    from torch.utils import cpp_extension

    build_directory = cpp_build_directory()
    name = build_directory.name
    library = build_directory / f"{name}{cpp_extension.LIB_EXT}"
    checked = _make_private_folder(build_directory)
    with _build_lock(build_directory) as lock:
        if _private_folder_identity(build_directory) != checked:  # swapped while this process waited for the lock
            raise PermissionError(
                f"refusing the kernel cache folder {build_directory}, which was replaced after it was checked; remove "
                "it, or set TORCH_EXTENSIONS_DIR to a folder of your own"
            )
        source = _cached_source(build_directory, library)
        record = library.with_name(f"{library.name}.sha256")
        if library.exists() and (not record.is_file() or record.read_text() != _digest(library)):
            print(f"sb3_stpn: {library} is not the library this cache built; rebuilding it", file=sys.stderr)
            library.unlink()
        for attempt in (1, 2):
            building = not library.is_file()
            if building:
                print(f"sb3_stpn: building the C++ STPN kernel in {build_directory} (about a minute, once)", file=sys.stderr)
            try:
                with _ninja_on_path(), _build_dies_with_this_process(build_directory, lock) if building else nullcontext():
                    cpp_extension.load(
                        name=name,
                        sources=[str(source)],
                        extra_cflags=CPP_CFLAGS,
                        build_directory=str(build_directory),
                        is_python_module=False,
                        verbose=False,
                    )
                break
            except Exception as error:
                if attempt == 2 or not library.exists():
                    raise RuntimeError(f"the C++ kernel in {build_directory} does not build or load: {error}") from error
                print(f"sb3_stpn: {library} does not load ({error}); rebuilding it once", file=sys.stderr)
                library.unlink()
        if library.is_file():
            record.write_text(_digest(library))
    return th.ops.sb3_stpn


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_private_folder(folder: Path) -> tuple[int, int]:
    """
    Make the cache folder, readable and writable by the user only (0700), or check the one there; return its identity
    (device, inode), which the caller checks again once it holds the folder's lock.

    Its name is predictable and torch's extension root may be shared: in a folder another account owns or
    may write to, that account could plant the source or library this process then builds or loads; in a parent
    others may write to (without the sticky bit), it could swap the whole folder for its own after the check.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    parent = folder.parent.stat()
    if parent.st_uid not in (os.geteuid(), 0) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        raise PermissionError(
            f"refusing the kernel cache folder {folder}: its parent {folder.parent} lets another account rename it "
            "(owned by another user, or writable by group or others without the sticky bit); set TORCH_EXTENSIONS_DIR "
            "to a folder of your own"
        )
    with suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    return _private_folder_identity(folder)


def _private_folder_identity(folder: Path) -> tuple[int, int]:
    """The (device, inode) of ``folder``, checked through one descriptor opened without following a link: a folder of
    this user's, written by nobody else, and not a symbolic link."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        descriptor = None  # a symbolic link (ELOOP), or not a folder
    if descriptor is None:
        problem: str | None = "is a symbolic link" if folder.is_symlink() else "is not a folder"
    else:
        try:
            status = os.fstat(descriptor)
        finally:
            os.close(descriptor)
        problem = (
            f"belongs to uid {status.st_uid}, not to you" if status.st_uid != os.geteuid()
            else "is writable by group or others" if status.st_mode & 0o022
            else None
        )  # fmt: skip
    if problem is not None:
        raise PermissionError(
            f"refusing the kernel cache folder {folder}, which {problem}; remove it, or set TORCH_EXTENSIONS_DIR "
            "to a folder of your own"
        )
    return status.st_dev, status.st_ino


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
def _build_lock(build_directory: Path) -> Iterator[int]:
    """
    Hold an exclusive ``flock`` on ``<build folder>/build.flock`` while torch builds or loads the kernel.

    torch's own lock (the file ``lock``, made with O_EXCL) outlives a build killed by SIGKILL, SIGTERM or
    the OOM killer, and every later load then waits on it forever. A ``flock`` is released by the kernel
    when its process dies, so whoever holds ours is alive, and a ``lock`` found under it is a dead build's:
    it is removed. Waiting for a live builder ends after ``BUILD_LOCK_TIMEOUT_S`` with a :class:`TimeoutError`.
    Yields the lock file's descriptor (see :func:`_build_dies_with_this_process`).
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
            yield lock_file.fileno()
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


# Run by a watchdog process while this one builds (see _build_dies_with_this_process): argv = builder pid, folder
_BUILD_WATCHDOG = """
import os, signal, sys, time
builder, folder = int(sys.argv[1]), os.path.realpath(sys.argv[2])

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except OSError:
        return False

while alive(builder):
    time.sleep(0.05)
for _ in range(3):  # a compiler that ninja starts while the sweep runs is caught by the next one
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == folder:
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
"""


@contextmanager
def _build_dies_with_this_process(build_directory: Path, lock: int) -> Iterator[None]:
    """
    While the block builds, a watchdog process ends the build's processes (ninja and the compilers, which torch
    starts in ``build_directory``) if this process dies first, even by SIGKILL: left running, they went on writing
    into the cache for half a minute without the lock. The watchdog shares the build lock (``lock``, a descriptor of
    the flocked file), so no other build can start in the folder until the orphans are gone. Linux (``/proc``) only.
    """
    if not Path("/proc/self/cwd").exists():
        yield
        return
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _BUILD_WATCHDOG, str(os.getpid()), str(build_directory)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(lock,), start_new_session=True,  # a Ctrl-C to this process's group must not stop the watchdog first
    )  # fmt: skip
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


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


def _cpp_flags(config: StpnConfig) -> tuple[bool, bool, bool, bool, float, float]:
    clamp = -1.0 if config.clamp is None else float(config.clamp)
    retention = -1.0 if config.relative_lambda_max is None else float(config.relative_lambda_max)
    return config.recurrent, config.normalize, config.rule == "oja", config.norm_time == "post", clamp, retention


def forward(
    x: th.Tensor,
    h0: th.Tensor,
    fast0: th.Tensor,
    starts: th.Tensor | None,
    params: StpnParams,
    config: StpnConfig,
    record_energy: bool,
    every: int,
) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
    """The sequence in the C++ kernel (``StpnBackend.forward``); it flags an inf or NaN in F, raised here."""
    (outputs, fast, energy, checkpoints), finite = _cpp_ops().forward(
        x, h0, fast0, starts, *params, *_cpp_flags(config), record_energy, every
    )
    raise_if_diverged(finite)
    return outputs, fast, energy if record_energy else None, checkpoints


def backward(
    x: th.Tensor,
    h0: th.Tensor,
    starts: th.Tensor | None,
    checkpoints: th.Tensor,
    outputs: th.Tensor,
    params: StpnParams,
    config: StpnConfig,
    every: int,
    d_outputs: th.Tensor,
    d_fast: th.Tensor,
) -> StpnGradients:
    """BPTT in the C++ kernel (``StpnBackend.backward``)."""
    dx, dh0, d_fast0, *grads = _cpp_ops().backward(
        x, h0, starts, checkpoints, outputs, *params, *_cpp_flags(config), every, d_outputs, d_fast
    )
    # The kernel returns an empty tensor for each absent parameter (bias lambda and gamma, norm gain)
    present = StpnParams._make(None if p is None else g for p, g in zip(params, grads, strict=True))
    return StpnGradients(dx, dh0, d_fast0, present)
