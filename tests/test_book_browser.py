"""The built book in a real browser: Debian's Chromium driven by Playwright.

Runs on ``_build/html`` as ``make book`` leaves it, served by a local HTTP server on 127.0.0.1. Checks:

* every page of ``_toc.yml`` loads with no JavaScript error, no console error, no failed or 4xx/5xx
  request and no request leaving 127.0.0.1 (the book must work offline: widgets, fonts and scripts
  are served from the book itself);
* the Table 1 pages show the paper's Table 1 as a table (a row "MSAN-V1", the 3D U-Net's 89.70);
* the slice viewer's embedded ipywidgets slider renders, and dragging it changes its value;
* the equations render offline: every page with an equation gets MathJax's ``mjx-container``
  elements from the MathJax served by the book itself (``_static/mathjax/``), with no request leaving
  127.0.0.1.

Skipped, with the reason, when the book has not been built (``make book``), when Chromium is not
installed (``apt-get install chromium``; the path can be set with ``KITSMSAN_CHROMIUM``) or when the
``playwright`` package is missing. Never ``playwright install``: the browser is the system's.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
HTML = REPO / "_build" / "html"

#: Chromium flags: headless in a container, no network side traffic of its own
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: pages that show the paper's Table 1 (the intro quotes it; the evaluation notebook sets ours beside it)
TABLE1_PAGES = ("book/intro", "book/generated/04_evaluation")
VIEWER_PAGE = "book/generated/06_slice_viewer"
#: pages that must hold equations (the API page renders the docstrings' :math: roles)
MATH_PAGES_REQUIRED = ("book/api",)


def toc_pages(toc_path: Path = REPO / "_toc.yml") -> list[str]:
    """Every page (docname) of the Jupyter Book table of contents, in reading order."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages


def test_toc_pages_parses_this_books_toc():
    pages = toc_pages()
    assert pages[0] == "book/intro"
    assert "book/generated/03_training_compared" in pages and VIEWER_PAGE in pages
    assert len(pages) == len(set(pages))


# ------------------------------------------------------------------------------------------------
# fixtures: the built book, a local server, Chromium
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def book_url():
    """``http://127.0.0.1:<port>/`` serving ``_build/html`` (skips when the book is not built)."""
    if not (HTML / "index.html").is_file():
        pytest.skip(f"the book is not built ({HTML / 'index.html'} missing): run `make book` first")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(HTML))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """A Playwright context of the system Chromium with a fresh user-data-dir (skips if missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    executable = os.environ.get("KITSMSAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).is_file():
        pytest.skip(f"Chromium not found ({executable}); install it with `apt-get install chromium`")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


class PageProblems:
    """Collects what went wrong while a page loaded: JS errors, console errors, bad requests."""

    def __init__(self, page, origin: str):
        self.items: list[str] = []
        self.origin = origin
        page.on("pageerror", self._pageerror)
        page.on("console", self._console)
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.route("**/*", self._route)

    def _pageerror(self, exc):
        where = next((ln.strip() for ln in (getattr(exc, "stack", "") or "").splitlines()[1:2]), "")
        self.items.append(f"JavaScript error: {exc} {where}".rstrip())

    def _console(self, msg):
        if msg.type == "error":
            self.items.append(f"console error: {msg.text}")

    def _failed(self, req):
        if req.url.startswith(self.origin):  # outside requests are reported (and aborted) by _route
            self.items.append(f"request failed: {req.url} ({req.failure})")

    def _response(self, resp):
        if resp.status >= 400:
            self.items.append(f"HTTP {resp.status}: {resp.url}")

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.origin) or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:  # the book must be self-contained; refuse and report anything else
            self.items.append(f"request leaves the book (offline it would fail): {url}")
            route.abort()


def open_page(context, url: str, origin: str):
    """Open ``url`` in a new tab, wait until the network is idle; returns (page, problems)."""
    page = context.new_page()
    problems = PageProblems(page, origin)
    response = page.goto(url, wait_until="networkidle")
    assert response is not None and response.ok, (
        f"{url}: HTTP {response.status if response else 'no response'}"
    )
    page.wait_for_timeout(300)  # let late scripts (widgets, theme) report their errors
    return page, problems


# ------------------------------------------------------------------------------------------------
# the checks
# ------------------------------------------------------------------------------------------------
def test_every_toc_page_loads_without_errors(book_url, browser_context):
    failures = {}
    for docname in toc_pages():
        html = HTML / f"{docname}.html"
        if not html.is_file():
            failures[docname] = ["page missing from _build/html"]
            continue
        page, problems = open_page(browser_context, book_url + f"{docname}.html", book_url)
        if not page.locator("main h1").first.inner_text().strip():
            problems.items.append("page has no title (h1)")
        page.close()
        if problems.items:
            failures[docname] = problems.items
    report = "\n".join(f"{doc}:\n  " + "\n  ".join(items) for doc, items in failures.items())
    assert not failures, f"{len(failures)} page(s) with problems:\n{report}"


@pytest.mark.parametrize("docname", TABLE1_PAGES)
def test_table1_page_shows_the_papers_table(book_url, browser_context, docname):
    page, problems = open_page(browser_context, book_url + f"{docname}.html", book_url)
    tables = page.locator("main table").filter(has_text="MSAN-V1")
    assert tables.count() >= 1, f"{docname}: no table with a MSAN-V1 row"
    texts = [tables.nth(i).inner_text() for i in range(tables.count())]
    assert any(re.search(r"\b89\.70?\b", t) and "3D U-Net" in t for t in texts), (
        f"{docname}: no MSAN-V1 table also shows the paper's 3D U-Net kidney Dice 89.70"
    )
    assert all(tables.nth(i).is_visible() for i in range(tables.count()))
    assert not problems.items, "\n".join(problems.items)
    page.close()


def test_viewer_slider_moves(book_url, browser_context):
    page, problems = open_page(browser_context, book_url + f"{VIEWER_PAGE}.html", book_url)
    slider = page.locator(".widget-slider").first
    slider.wait_for(state="visible", timeout=15_000)  # rendered by html-manager from the saved state
    slider.scroll_into_view_if_needed()  # mouse coordinates are viewport coordinates
    handle = slider.locator(".noUi-handle").first
    readout = slider.locator(".widget-readout").first
    before = readout.inner_text().strip()
    track = slider.locator(".noUi-target").first.bounding_box()
    box = handle.bounding_box()
    assert track is not None and box is not None, "slider has no size on the page"
    # drag the handle towards the end of the track that is farther away
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    x1 = track["x"] + (track["width"] * 0.9 if x0 < track["x"] + track["width"] / 2 else track["width"] * 0.1)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y0, steps=12)
    page.mouse.up()
    page.wait_for_timeout(300)
    after = readout.inner_text().strip()
    assert after != before, f"the slider did not move (readout stayed {before!r})"
    # moving it must not break the page (requests are checked by the every-page test)
    errors = [item for item in problems.items if item.startswith("JavaScript error")]
    assert not errors, "\n".join(errors)
    page.close()


def math_pages() -> list[str]:
    """The built pages that hold at least one equation (Sphinx marks each with ``class="math ..."``)."""
    found = []
    for docname in toc_pages():
        html = HTML / f"{docname}.html"
        if html.is_file() and 'class="math notranslate' in html.read_text(encoding="utf-8"):
            found.append(docname)
    return found


def test_equations_render_offline(book_url, browser_context):
    pages = math_pages()
    missing = [d for d in MATH_PAGES_REQUIRED if d not in pages]
    assert not missing, f"pages without any equation: {missing}"
    for docname in pages:
        page, problems = open_page(browser_context, book_url + f"{docname}.html", book_url)
        sources = page.eval_on_selector_all("script[src*='mathjax']", "els => els.map(e => e.src)")
        assert sources and all(src.startswith(book_url) for src in sources), (
            f"{docname}: MathJax not loaded from the book itself: {sources}"
        )
        page.locator("mjx-container").first.wait_for(state="attached", timeout=20_000)
        page.wait_for_function(
            "() => document.querySelectorAll('.math').length <= document.querySelectorAll('mjx-container').length",
            timeout=20_000,
        )
        assert page.locator("mjx-container").count() >= page.locator(".math").count() > 0
        page.wait_for_timeout(300)  # fonts loaded after typesetting would report here
        assert not problems.items, f"{docname}:\n" + "\n".join(problems.items)
        page.close()


def _shown_frame(page) -> str:
    """The ``src`` of the viewer frame on show (the one visible image of the widget area)."""
    images = page.locator(".widget-image:visible, .jupyter-widgets img:visible")
    assert images.count() >= 1, "no visible viewer frame"
    return images.first.get_attribute("src") or ""


def test_viewer_static_controls_change_the_picture(book_url, browser_context):
    page, problems = open_page(browser_context, book_url + f"{VIEWER_PAGE}.html", book_url)
    page.locator(".widget-slider").first.wait_for(state="visible", timeout=15_000)
    # the layer buttons: each one shows another frame
    buttons = page.locator(".widget-toggle-button:visible")
    assert buttons.count() >= 2, "no layer buttons on the static page"
    first = _shown_frame(page)
    page.locator(".widget-toggle-button:visible:not(.mod-active)").first.click()
    page.wait_for_timeout(300)
    assert _shown_frame(page) != first, "the layer buttons do not change the picture"
    # the case dropdown: another case, another picture
    select = page.locator(".widget-dropdown select").first
    options = select.locator("option")
    if options.count() >= 2:
        before = _shown_frame(page)
        select.select_option(index=1)
        page.wait_for_timeout(300)
        assert _shown_frame(page) != before, "the case dropdown does not change the picture"
    # no control that needs a kernel is on the static page
    labels = [t.strip() for t in page.locator(".widget-label:visible").all_inner_texts()]
    assert not {"level", "width", "opacity"} & set(labels), f"kernel-only controls shown: {labels}"
    errors = [item for item in problems.items if item.startswith("JavaScript error")]
    assert not errors, "\n".join(errors)
    page.close()
