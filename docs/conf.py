"""Sphinx configuration for the outpostspawner documentation.

Build: ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``).
The build needs no network access: intersphinx is off unless
``OUTPOSTSPAWNER_DOCS_INTERSPHINX=1`` is set.
"""

from __future__ import annotations

import os
import sys

# the package is normally installed (editable); this makes a plain checkout work too
sys.path.insert(0, os.path.abspath(".."))

from outpostspawner import __version__  # noqa: E402

project = "outpostspawner"
author = "outpostspawner contributors"
copyright = "outpostspawner contributors"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "autodoc_traits",
    "sphinx_copybutton",
    "sphinxcontrib.openapi",
]

# intersphinx downloads inventories at build time; only on request
if os.environ.get("OUTPOSTSPAWNER_DOCS_INTERSPHINX", "") in ("1", "true", "yes"):
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "jupyterhub": ("https://jupyterhub.readthedocs.io/en/stable", None),
        "tornado": ("https://www.tornadoweb.org/en/stable", None),
        "traitlets": ("https://traitlets.readthedocs.io/en/stable", None),
    }

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"

copybutton_prompt_text = r"\$ "
copybutton_prompt_is_regexp = True

try:
    import pydata_sphinx_theme  # noqa: F401
except ImportError:
    html_theme = "alabaster"
else:
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navigation_with_keys": False,
        "show_toc_level": 2,
    }
html_title = f"outpostspawner {version}"
html_static_path: list[str] = []
