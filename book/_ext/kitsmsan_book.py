"""Sphinx glue for the kitsmsan book (loaded through ``sphinx.local_extensions`` in ``_config.yml``).

Small things that keep the book honest and the repository URL in one place:

* ``@REPO_URL@`` and ``@REPO_BRANCH@`` in any Markdown page are replaced, before parsing, by
  ``repository.url`` and ``repository.branch`` of ``_config.yml`` (e.g. in the Colab install cell),
  so changing the URL there changes it everywhere.
* The ``{test}`` role, ``{test}`tests/test_losses.py::test_dice_hand_computed```, checks at build
  time that the test file exists and defines that test (a function ``def name`` or a class
  ``class Name``; ``Class::method`` is accepted) and renders the test's name as a link to its line
  in the repository (the full node id is the link's title). A missing test is a build warning,
  which ``-W`` turns into an error: the paper-to-code map cannot silently point at a test that was
  renamed or deleted.
* Launch buttons (Colab, Binder) of the executed notebook pages in ``book/generated/`` would point at
  files that are not in git; they are rewritten to the source notebook in ``notebooks/``, using the
  ``output -> notebook`` pairs of ``scripts/notebook_params.json``.
* Short or re-exported names in docstrings (``ModelConfig``, ``kitsmsan.models.build_model``) are
  resolved to the one documented object they name, so ``-n`` only reports real dangling references.
* Prose docstrings of constants are not split by napoleon into a bogus ``type: description``.
* Notebook HTML outputs that fetch Font Awesome from a CDN (matplotlib's animation player) have
  that ``<link>`` removed: the theme ships Font Awesome, and the book must work offline.
* Repeated ``<script>`` tags (a Sphinx 7.4 + Jupyter Book 1 glitch that raises a JavaScript error
  on every page) are removed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)

#: the file, relative to the repository root (= the book root), listing the notebook runs
NOTEBOOK_PARAMS = "scripts/notebook_params.json"

_TEST_REF = re.compile(r"^(?P<file>tests/[\w/]+\.py)::(?P<names>\w+(::\w+)?)$")


def _repo(app: Sphinx) -> tuple[str, str]:
    """Return ``(repository_url, branch)`` from the theme options set by Jupyter Book."""
    options = app.config.html_theme_options or {}
    url = str(options.get("repository_url", "")).rstrip("/")
    branch = str(options.get("repository_branch", "") or "main")
    return url, branch


def substitute_repo(app: Sphinx, docname: str, source: list[str]) -> None:
    """``source-read`` handler: replace ``@REPO_URL@`` / ``@REPO_BRANCH@`` in a page's text."""
    if "@REPO_" not in source[0]:
        return
    url, branch = _repo(app)
    if not url:
        LOGGER.warning("%s uses @REPO_URL@ but repository.url is not set in _config.yml", docname,
                       type="kitsmsan", subtype="repo")
    source[0] = source[0].replace("@REPO_URL@", url).replace("@REPO_BRANCH@", branch)


def _defines(text: str, names: list[str]) -> bool:
    """Whether ``text`` (a Python file) defines ``names`` (``[func]`` or ``[Class, method]``)."""
    return _definition_line(text, names) is not None


def _definition_line(text: str, names: list[str]) -> int | None:
    """1-based line of the definition of ``names`` in ``text``, or ``None`` when it is not defined."""
    if len(names) == 1:
        match = re.search(rf"^(async\s+)?(def|class)\s+{names[0]}\b", text, re.M)
        return None if match is None else text.count("\n", 0, match.start()) + 1
    cls, method = names
    block = re.search(rf"^class\s+{cls}\b.*?(?=^\S|\Z)", text, re.M | re.S)
    if block is None:
        return None
    match = re.search(rf"^[ \t]+(async\s+)?def\s+{method}\b", block.group(0), re.M)
    if match is None:
        return None
    return text.count("\n", 0, block.start() + match.start()) + 1


def test_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """The ``{test}`` role: a checked link to a test, ``tests/test_x.py::test_name``."""
    env = inliner.document.settings.env
    app = env.app
    match = _TEST_REF.match(text.strip())
    label = text.strip().rsplit("::", 1)[-1]  # the test's name; the file is in the link and its title
    literal = nodes.literal(label, label)
    if match is None:
        msg = inliner.reporter.warning(
            f"{{test}} role: {text!r} is not of the form tests/test_file.py::test_name", line=lineno)
        return [literal], [msg]
    path = Path(app.srcdir) / match["file"]
    names = match["names"].split("::")
    if not path.is_file():
        LOGGER.warning("{test} role: test file %s does not exist (referenced as %r)", match["file"],
                       text, location=(env.docname, lineno), type="kitsmsan", subtype="test")
    line = _definition_line(path.read_text(encoding="utf-8"), names) if path.is_file() else None
    if path.is_file() and line is None:
        LOGGER.warning("{test} role: %s defines no test %s (referenced as %r)", match["file"],
                       "::".join(names), text, location=(env.docname, lineno), type="kitsmsan",
                       subtype="test")
    env.note_dependency(str(path))
    url, branch = _repo(app)
    if not url:
        return [literal], []
    anchor = f"#L{line}" if line else ""
    ref = nodes.reference(rawtext, "", refuri=f"{url}/blob/{branch}/{match['file']}{anchor}",
                          reftitle=text.strip(), classes=["kitsmsan-test-ref"])
    ref += literal
    return [ref], []


def _notebook_sources(app: Sphinx) -> dict[str, str]:
    """Map ``book/generated/x`` (docname) -> ``notebooks/x.ipynb`` from ``scripts/notebook_params.json``."""
    path = Path(app.srcdir) / NOTEBOOK_PARAMS
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return {str(Path(e["output"]).with_suffix("")): str(e["notebook"]) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        LOGGER.warning("%s: cannot read the output -> notebook pairs (%s)", NOTEBOOK_PARAMS, exc,
                       type="kitsmsan", subtype="params")
        return {}


def rewrite_launch_buttons(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """``html-page-context`` handler: point launch buttons of generated pages at notebooks/."""
    if not pagename.startswith("book/generated/"):
        return
    sources = getattr(app, "_kitsmsan_notebook_sources", None)
    if sources is None:
        sources = app._kitsmsan_notebook_sources = _notebook_sources(app)
    source = sources.get(pagename)
    if source is None:
        return
    generated = f"{pagename}.ipynb"
    for group in context.get("header_buttons", []):
        if group.get("label") != "launch-buttons":
            continue
        for button in group.get("buttons", []):
            if "url" in button:
                button["url"] = button["url"].replace(generated, source)


def dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """``html-page-context`` handler: drop repeated ``<script>`` entries from the page.

    Sphinx 7.4 registers inline scripts added after the builder starts twice (once with filename
    ``None``, once with ``''``), so pages of Jupyter Book 1 carry ``const THEBE_JS_URL = ...`` twice
    and the browser reports "Identifier 'THEBE_JS_URL' has already been declared" on every page.
    """
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", js) or "", getattr(js, "priority", 0), tuple(sorted(attrs.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def _importable(dotted: str) -> bool:
    """Whether ``dotted`` (``pkg.module.attr.attr``) names an object that exists at import time."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def resolve_reexports(app: Sphinx, env, node, contnode):
    """``missing-reference`` handler: resolve a short or re-exported name to its one kitsmsan object.

    Docstrings say ``ModelConfig`` or ``kitsmsan.models.build_model`` (the name a user imports), while
    autodoc documents the object where it is defined (``kitsmsan.models.msan.ModelConfig``,
    ``kitsmsan.models.registry.build_model``). When exactly one documented ``kitsmsan`` object has the
    same last name component (and, for a dotted target, lives under the same package), the
    reference is resolved to it. A name that exists in the package but is not documented (a
    constant without a ``#:`` comment) is rendered as plain code. Anything else stays missing and
    ``-n`` reports it: a docstring cannot name a function that does not exist.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip(".~")
    if not target or " " in target:
        return None
    domain = env.get_domain("py")
    head, _, last = target.rpartition(".")

    def matches(name: str) -> bool:
        if name.endswith("." + target):  # ModelConfig.to_dict -> kitsmsan.models.msan.ModelConfig.to_dict
            return True
        # kitsmsan.models.build_model -> kitsmsan.models.registry.build_model (a re-export)
        return head.startswith("kitsmsan") and name.startswith(head + ".") and name.rsplit(".", 1)[-1] == last

    candidates = [(name, obj) for name, obj in domain.objects.items()
                  if name.startswith("kitsmsan.") and not obj.aliased and matches(name)]
    if len(candidates) != 1:
        # an existing but undocumented kitsmsan object (a constant without a doc comment): plain text
        scopes = [node.get("py:module"), node.get("py:class")]
        for full in (target, ".".join(filter(None, [scopes[0], target])),
                     ".".join(filter(None, [*scopes, target]))):
            if full.startswith("kitsmsan") and _importable(full):
                return contnode
        return None
    name, obj = candidates[0]
    from sphinx.util.nodes import make_refnode

    return make_refnode(app.builder, node.get("refdoc", env.docname), obj.docname, obj.node_id, contnode, name)


_TYPE_LIKE = re.compile(r"^[\w.\[\]]+$")  # after removing ", ", " | " and " or " separators


def protect_attribute_prose(app: Sphinx, what: str, name: str, obj, options, lines: list[str]) -> None:
    """``autodoc-process-docstring`` handler (before napoleon): keep prose docstrings of constants whole.

    Napoleon reads the first line of a data/attribute docstring as ``type: description``, so a prose
    line such as ``Table 1 of the paper (MSAN paper, Table 1): ...`` would turn its first clause into a
    (dangling) type reference. When the text before the first colon is not type-like
    (``tuple[int, int]``, ``int | None``), an empty reST comment (``..`` and a blank line) is put
    first: napoleon then finds no inline type and keeps the whole docstring as the description.
    """
    if what not in ("data", "attribute", "property") or not lines or ":" not in lines[0]:
        return
    prefix = lines[0].split(":", 1)[0].strip()
    if prefix and not _TYPE_LIKE.match(re.sub(r",\s*|\s*\|\s*|\s+or\s+", "", prefix)):
        lines[:0] = ["..", ""]


#: ``<link>`` tags in notebook HTML outputs that load Font Awesome from a CDN (matplotlib's
#: ``to_jshtml`` player adds one for its buttons); the theme already ships Font Awesome
_CDN_FONT_AWESOME = re.compile(r"<link\b[^>]*\bhref=[\"']https?://[^\"']*font-?awesome[^\"']*[\"'][^>]*>\s*", re.I)


def strip_cdn_font_awesome(html: str) -> str:
    """Remove ``<link>`` tags that fetch Font Awesome from a CDN from an HTML fragment."""
    return _CDN_FONT_AWESOME.sub("", html)


def offline_outputs(app: Sphinx, doctree, docname: str) -> None:
    """``doctree-resolved`` handler: drop CDN Font Awesome links from notebook HTML outputs.

    The book is read offline; the theme's own Font Awesome draws the same ``fa fa-*`` icons (the
    animation player's buttons), so the CDN stylesheet is only a failed request and a console error.
    """
    for node in doctree.findall(nodes.raw):
        if "html" in node.get("format", "") and "awesome" in node.astext().lower():
            text = strip_cdn_font_awesome(node.astext())
            node.children = [nodes.Text(text)]


def setup(app: Sphinx) -> dict:
    """Register the handlers and the ``{test}`` role."""
    app.connect("source-read", substitute_repo)
    app.connect("html-page-context", rewrite_launch_buttons, priority=600)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.connect("missing-reference", resolve_reexports)
    app.connect("autodoc-process-docstring", protect_attribute_prose, priority=400)
    app.connect("doctree-resolved", offline_outputs)
    app.add_role("test", test_role)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
