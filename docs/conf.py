"""
Sphinx configuration of the documentation site: the Markdown pages of this folder (through MyST) and the API
reference generated from the docstrings (``api/``), whose ``:param:`` fields ``_ext/param_check.py`` holds to the
signatures. Build it from the repository root with ``.venv/bin/python -m sphinx -W -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

from sphinx.application import Sphinx

DOCS = Path(__file__).resolve().parent
# The package of this checkout (not an installed copy), and the local extension
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

import sb3_stpn  # noqa: E402

project = "sb3-stpn"
author = "The sb3-stpn developers"
release = sb3_stpn.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "param_check", "outside_links"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Anchors such as plasticity.md#round-8-2026-12-03-minigrid-memorys7-at-400k-steps, as GitHub makes them
myst_heading_anchors = 4

# The reference shows this project's docstrings (which param_check checks), not those inherited from SB3 or torch
autodoc_inherit_docstrings = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Defaults as written (nn.Tanh), not as their repr
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"sb3-stpn {release}"


def skip_tuple_fields(app: Sphinx, what: str, name: str, obj: object, skip: bool, options: object) -> bool | None:
    """A NamedTuple's fields are documented as its parameters: their entries ("Alias for field number N") go."""
    return True if type(obj).__name__ == "_tuplegetter" else None


def setup(app: Sphinx) -> None:
    app.connect("autodoc-skip-member", skip_tuple_fields)
