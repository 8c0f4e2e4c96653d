"""
A Sphinx extension that fails the build when a docstring drifts from its signature.

For every function, method and class that autodoc documents, the ``:param name:`` fields of its docstring must name
exactly the parameters of its signature (a class's: its constructor's, which SB3-style docstrings document in the
class docstring). ``self``/``cls`` need no entry, nor do ``*args``/``**kwargs`` or ``_private`` ones (they may have
one). Each mismatch is a Sphinx warning, so that ``sphinx-build -W`` fails on it.
"""

import inspect
import re
from collections.abc import Callable
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

# ``:param name:`` and ``:param type name:``, as Sphinx's Python domain reads them
PARAM_FIELD = re.compile(r"^\s*:param\s+(?:[^:]*\s)?\*{0,2}(\w+)\s*:")
CHECKED = ("function", "method", "class", "exception")
OPTIONAL_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def documented_params(lines: list[str]) -> list[str]:
    """The parameter names of a docstring's ``:param:`` fields, in order."""
    return [match.group(1) for line in lines if (match := PARAM_FIELD.match(line))]


def param_drift(obj: Callable[..., Any], lines: list[str]) -> list[str]:
    """
    What the docstring ``lines`` of ``obj`` get wrong about its signature: one sentence per mismatch.

    :param obj: A function, method or class (checked against its constructor's signature).
    :param lines: The docstring, one line per item, as autodoc hands it over.
    :return: The mismatches; none for an object without a signature (a builtin's).
    """
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return []
    documented = documented_params(lines)
    problems = [f":param {name}: documents a parameter the signature lacks" for name in documented if name not in parameters]
    problems += [
        f"parameter {name!r} has no :param: entry"
        for name, parameter in parameters.items()
        if name not in documented
        and name not in ("self", "cls")
        and parameter.kind not in OPTIONAL_KINDS
        and not name.startswith("_")
    ]
    return problems


def source_location(obj: Any) -> str | None:
    """``file:line`` of the object's definition, for the warning (None where there is no Python source)."""
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (OSError, TypeError):
        return None


def check_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """autodoc-process-docstring: warn about each parameter the docstring and the signature disagree on."""
    if what not in CHECKED:
        return
    for problem in param_drift(obj, lines):
        logger.warning("%s: %s", name, problem, type="param_check", location=source_location(obj))


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", check_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
