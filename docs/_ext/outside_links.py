"""
A Sphinx extension for the Markdown pages' links to repository files that are not pages of the site: the project
README, the op's equations (``sb3_stpn/ops/stpn/README.md``), the changelog, and the records under ``results/``
(the rounds' tables, the archive). MyST takes a link to any ``.md`` file for a link to a page, and warns where there is
none; these become download links instead, so that the site carries a copy of each file and every link leads
somewhere (a ``#section`` of such a file is dropped: the copy is the raw file).
"""

import os
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx


def outside_file(app: Sphinx, docname: str) -> Path | None:
    """The source file a MyST page link names, if it exists but is not a page of the site (else None)."""
    if docname in app.env.found_docs:
        return None
    # MyST names the target by its path without suffix: relative to the docs folder, or absolute outside it
    candidates = (Path(app.srcdir, docname + suffix) for suffix in app.config.source_suffix)
    return next((path for path in candidates if path.is_file()), None)


def link_outside_files(app: Sphinx, doctree: nodes.document) -> None:
    """doctree-read, before Sphinx collects the downloads: a page link to an outside file becomes a download link."""
    page_folder = Path(app.env.doc2path(app.env.docname)).parent
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
            continue
        path = outside_file(app, node["reftarget"])
        if path is None:
            continue
        download = addnodes.download_reference(
            refdomain=None, reftarget=os.path.relpath(path, page_folder), refdoc=app.env.docname, refexplicit=True
        )
        download += node.children
        node.replace_self(download)


def setup(app: Sphinx) -> dict[str, Any]:
    # Sphinx's download collector listens at the default priority, 500: this runs first
    app.connect("doctree-read", link_outside_files, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
