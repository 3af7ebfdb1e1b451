"""MkDocs hook: serves MathJax from the site itself, copied from a Python package.

The formulas (pymdownx.arithmatex) are typeset by MathJax 3 in the reader's
browser. Loading it from a CDN leaves raw `\\[ ... \\]` on a machine without
network, so the build copies MathJax's combined TeX component, its fonts and its
TeX extensions from the `django-static-mathjax` package (MathJax 3.2.2 as plain
files; it imports nothing from Django) into `js/mathjax/` of the built site.
"""

import importlib.util
import os
import shutil

from mkdocs.exceptions import PluginError

__all__ = ["ASSETS", "SITE_DIR", "mathjax_root", "on_post_build"]

# What the combined component needs: itself, the CHTML fonts it loads by a path
# relative to its own URL, and the TeX extensions its `autoload` fetches (e.g.
# `\boldsymbol`). The accessibility and speech parts (20 MB) are left out.
ASSETS = ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions")
SITE_DIR = "js/mathjax"  # mkdocs.yml's extra_javascript points here


def mathjax_root():
  """The folder of MathJax's ES5 build inside the installed package."""
  spec = importlib.util.find_spec("mathjax")
  root = None
  if spec is not None and spec.submodule_search_locations:
    root = os.path.join(list(spec.submodule_search_locations)[0],
                        "static", "mathjax", "es5")
  if root is None or not os.path.isfile(os.path.join(root, ASSETS[0])):
    raise PluginError(
        "MathJax's files were not found (no `mathjax` package with "
        "static/mathjax/es5/tex-mml-chtml.js): install the docs extra, "
        "`pip install -e \".[docs]\"`, which brings django-static-mathjax.")
  return root


def on_post_build(config, **kwargs):  # pylint: disable=unused-argument
  """Copies MathJax's assets into `SITE_DIR` of the built site."""
  root = mathjax_root()
  target = os.path.join(config["site_dir"], SITE_DIR)
  for asset in ASSETS:
    src, dst = os.path.join(root, asset), os.path.join(target, asset)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.isdir(src):
      shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
      shutil.copyfile(src, dst)
