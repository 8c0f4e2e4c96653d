"""Saves that a kill, Ctrl-C or a full disk cannot leave half-written, and what loaders check before they pick a file.

SB3 writes a model or VecNormalize file in place: a run stopped or out of space mid-save leaves a 0-byte
or truncated file where the last good one was, which a loader then picks. :func:`atomic_write` writes a
temporary file in the same folder, fsyncs it and renames it over the target, so the target is always
either the previous complete file or the new one (:func:`sb3_stpn.zoo.patches.atomic_saves` sends SB3's
saves through it). A save killed outright (SIGKILL, out of memory) cannot remove its temporary file; the
next save to the same path removes it.
"""

import glob
import os
import pickle
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import VecNormalize


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> None:
    """
    Write ``path`` through ``write(file)`` so that it is never seen half-written.

    The bytes go to a temporary file of the same folder (same file system, so the rename is atomic),
    reach the disk (fsync), then replace ``path``; on any error, the temporary file is removed and
    ``path`` is left as it was. ``write`` may close the file (SB3's zip writer does).
    """
    path = Path(path)
    _remove_orphaned_temporaries(path)
    owner = f".{path.name}.{socket.gethostname()}.{os.getpid()}."  # whose file it is, for a later save's sweep
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=owner, suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from a group sharing the run
        with open(descriptor, "wb") as file:
            write(file)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a full disk fails inside the writer, which does not say which file
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)


def _umask() -> int:
    """The process's umask: read from /proc on Linux, where setting it to read it back would race other threads."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _remove_orphaned_temporaries(path: Path) -> None:
    """Remove the temporary files of earlier saves to ``path`` on this host whose process is gone (killed mid-save);
    a live writer's file (another run saving to the same folder) is left alone."""
    if os.name != "posix":
        return  # os.kill(pid, 0) is a liveness probe on POSIX only (on Windows it terminates the process)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(socket.gethostname())}\.(\d+)\..*\.tmp")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.fullmatch(candidate.name)
        if match is not None and not process_alive(int(match[1])):
            candidate.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def atomic_model_save(save: Callable[..., None]) -> Callable[..., None]:
    """``save`` (SB3's ``BaseAlgorithm.save``), atomic when it writes to a path."""

    def atomic_save(model: BaseAlgorithm, path: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            return save(model, path, *args, **kwargs)  # a file object: the caller owns it
        path = Path(path)
        path = path if path.suffix else path.with_name(f"{path.name}.zip")  # SB3's naming
        atomic_write(path, lambda file: save(model, file, *args, **kwargs))

    return atomic_save


def atomic_vec_normalize_save(vec_normalize: VecNormalize, save_path: str) -> None:
    """SB3's ``VecNormalize.save``, atomic."""
    atomic_write(save_path, lambda file: pickle.dump(vec_normalize, file))


def load_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the model zip ``path`` does not load (its data and every tensor read), or None if it does."""
    try:
        load_from_zip_file(os.fspath(path), device="cpu")
    except Exception as error:  # a 0-byte, truncated or foreign file fails in many ways inside SB3 and torch
        return f"{type(error).__name__}: {error}".split("\n")[0]
    return None


def checkpoint_vec_normalize_path(model_path: str | os.PathLike[str]) -> Path | None:
    """The VecNormalize statistics SB3's CheckpointCallback saves with ``<prefix>_<N>_steps.zip``, None for another model."""
    model_path = Path(model_path)
    match = re.fullmatch(r"(.+)_(\d+)_steps\.zip", model_path.name)
    return None if match is None else model_path.with_name(f"{match[1]}_vecnormalize_{match[2]}_steps.pkl")
