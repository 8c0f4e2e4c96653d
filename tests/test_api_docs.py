"""The documentation site (``docs/``: the Markdown pages and the API reference from the docstrings) builds with
warnings as errors, and its docstring check (``docs/_ext/param_check.py``) fails a build whose ``:param:`` fields
drift from the signature."""

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sb3_stpn
import sb3_stpn.envs
import sb3_stpn.ops.stpn
from tests.helpers import ONE_THREAD, REPO

EXTENSIONS = REPO / "docs" / "_ext"
_spec = importlib.util.spec_from_file_location("param_check", EXTENSIONS / "param_check.py")
assert _spec is not None and _spec.loader is not None
param_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(param_check)


def sphinx_build(source: Path, output: Path) -> subprocess.CompletedProcess:
    """``sphinx -W -b html`` of ``source`` into ``output``: exit status 0 only without a warning."""
    command = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(source), str(output)]
    return subprocess.run(command, cwd=REPO, env=ONE_THREAD, capture_output=True, text=True, timeout=300)


def test_the_site_builds_without_a_warning_and_documents_every_export(tmp_path: Path) -> None:
    result = sphinx_build(REPO / "docs", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = "".join(page.read_text() for page in (tmp_path / "api").glob("*.html"))
    documented = set(re.findall(r'<dt class="sig sig-object py" id="[\w.]*?\.(\w+)"', reference))
    exports = {*sb3_stpn.__all__, *sb3_stpn.ops.stpn.__all__, *sb3_stpn.envs.__all__}
    assert exports <= documented, sorted(exports - documented)
    # The Markdown pages are part of the site, their links to files outside it included (as downloads)
    assert (tmp_path / "stpn.html").is_file() and list((tmp_path / "_downloads").rglob("CHANGELOG.md"))


def scale(values: list[float], factor: float, *args: float, **kwargs: float) -> list[float]:
    """
    Scale the values.

    :param values: The values.
    :param offset: Added after scaling (no such parameter: the docstring drifted).
    """
    return [value * factor for value in values]


class Scaler:
    """
    A class documents its constructor's parameters.

    :param factor: The factor.
    """

    def __init__(self, factor: float, _private: bool = False) -> None:
        self.factor = factor


def test_param_drift_names_each_mismatch() -> None:
    """A documented parameter the signature lacks and a parameter with no entry; ``*args``, ``**kwargs``, ``self``
    and ``_private`` ones need none."""
    lines = scale.__doc__.splitlines()  # type: ignore[union-attr]
    assert param_check.param_drift(scale, lines) == [
        ":param offset: documents a parameter the signature lacks",
        "parameter 'factor' has no :param: entry",
    ]
    assert param_check.param_drift(Scaler, Scaler.__doc__.splitlines()) == []  # type: ignore[union-attr]
    assert param_check.documented_params([":param int factor: typed", "  :param **kwargs: more"]) == ["factor", "kwargs"]


@pytest.mark.parametrize("drifted", [False, True])
def test_a_drifting_docstring_fails_the_build(tmp_path: Path, drifted: bool) -> None:
    """A one-function site builds; the same with a :param: its signature lacks fails, naming it."""
    name = "offset" if drifted else "factor"
    (tmp_path / "scaling.py").write_text(
        textwrap.dedent(f'''
            def scale(values, factor):
                """
                :param values: The values.
                :param {name}: The factor.
                """
            ''')
    )
    (tmp_path / "conf.py").write_text(
        f"import sys\nsys.path[:0] = [{str(tmp_path)!r}, {str(EXTENSIONS)!r}]\nextensions = ['param_check']\n"
    )
    (tmp_path / "index.rst").write_text("Scaling\n=======\n\n.. autofunction:: scaling.scale\n")
    result = sphinx_build(tmp_path, tmp_path / "html")
    message = "scaling.scale: :param offset: documents a parameter the signature lacks"
    assert (result.returncode != 0) == drifted and (message in result.stderr) == drifted, result.stderr
