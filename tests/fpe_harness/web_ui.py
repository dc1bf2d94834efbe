"""Drive ComfyUI's real web page in headless Chromium (Debian's package) through Playwright.

Only what a user does: open the page, drop a workflow file on the canvas, read the graph as the page
shows it, pick values in widgets, press Ctrl+Enter (the Queue keybinding of both the 2024 web UI
and the current frontend), wait for the result images to appear on their nodes; on the current
frontend also open a node's help (the node library's "?" button, the selection toolbox's info
button) and read what the panel shows, and on both read the dialog that reports missing node types.
The page's own ``app`` / ``LiteGraph`` objects are read only to see what it shows (and where a
node's title bar is, to click it). No browser is downloaded:
``FPE_CHROMIUM`` or ``/usr/bin/chromium`` is launched with the flags a closed network needs.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
]
VIEWPORT = {"width": 1600, "height": 1000}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """The Chromium to drive: ``FPE_CHROMIUM``, else Debian's ``chromium`` on PATH."""
    explicit = os.environ.get("FPE_CHROMIUM")
    found = explicit or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        raise BrowserMissing(
            "no Chromium for the browser test: install Debian's package (`apt-get install chromium`; "
            "dev/test.sh does it when run as root) or set FPE_CHROMIUM to a Chromium/Chrome binary")
    return found


_APP_READY = """() => window.app && window.app.graph && window.LiteGraph
    && LiteGraph.registered_node_types && LiteGraph.registered_node_types['CheckpointLoaderSimple']
    && document.querySelector('canvas')"""

_DROP_FILE = """([text, name]) => {
    const dt = new DataTransfer();
    dt.items.add(new File([text], name, {type: 'application/json'}));
    return dt;
}"""

_SHOWS_NODES = """(expected) => JSON.stringify((app.graph._nodes ?? app.graph.nodes).map(n => [n.id, n.type])
    .sort((a, b) => a[0] - b[0])) === JSON.stringify(expected)"""

_SAVED_WIDGET_VALUES = """() => Object.fromEntries(app.graph.serialize().nodes.map(n => [n.id, n.widgets_values ?? []]))"""


def _node_ids_and_types(workflow: dict) -> list:
    return sorted([n["id"], n["type"]] for n in workflow["nodes"])

_GRAPH_NODES = """() => (app.graph._nodes ?? app.graph.nodes).map(n => ({
    id: n.id, type: n.type, title: n.title ?? null, mode: n.mode ?? 0,
    registered: !!LiteGraph.registered_node_types[n.type],
    has_errors: !!n.has_errors,
    images: (n.imgs ?? []).length,
    widgets: (n.widgets ?? []).map(w => {
        let values = w.options?.values;
        if (typeof values === 'function') { try { values = values(w, n); } catch (e) { values = null; } }
        const v = w.value;
        return {name: w.name ?? '', type: w.type ?? '', value: (v !== null && typeof v === 'object') ? null : v,
                values: Array.isArray(values) ? values : null,
                min: w.options?.min ?? null, max: w.options?.max ?? null};
    }),
}))"""

_FIT_VIEW = """(margin) => {
    const nodes = app.graph._nodes ?? app.graph.nodes;
    const title = LiteGraph.NODE_TITLE_HEIGHT ?? 30;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const el = app.canvas.canvas, w = el.clientWidth, h = el.clientHeight;
    const scale = Math.min((w - 2 * margin) / (x1 - x0), (h - 2 * margin) / (y1 - y0));
    const ds = app.canvas.ds;
    ds.scale = scale;
    ds.offset[0] = (w / scale - (x1 - x0)) / 2 - x0;
    ds.offset[1] = (h / scale - (y1 - y0)) / 2 - y0;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
}"""

_SET_WIDGET = """([id, name, value]) => {
    const node = app.graph.getNodeById(id);
    const widget = (node?.widgets ?? []).find(w => w.name === name);
    if (!widget) return {error: `no widget '${name}' on node ${id}`};
    let values = widget.options?.values;
    if (typeof values === 'function') values = values(widget, node);
    if (Array.isArray(values) && !values.includes(value)) return {error: `'${value}' is not offered`, offered: values};
    widget.value = value;
    widget.callback?.(widget.value, app.canvas, node, [0, 0], {});
    app.graph.setDirtyCanvas(true, true);
    return {value: widget.value};
}"""

_HIDE_CHROME = """async () => {
    const manager = app.extensionManager;
    if (!manager?.command || !manager?.setting) return false;
    await manager.setting.set('Comfy.Minimap.Visible', false);
    await manager.setting.set('Comfy.Graph.CanvasInfo', false);
    await manager.setting.set('Comfy.Graph.CanvasMenu', false);
    await manager.command.execute('Workspace.ToggleFocusMode');
    return true;
}"""

_NODES_SHOW_IMAGES = """(ids) => ids.every(id => (app.graph.getNodeById(id)?.imgs ?? []).length > 0)"""

# Current frontend's node help (NodeHelpContent): while loading a spinner; then the page's markdown
# (``.markdown-content``) or, when no page was found, a fallback built from the node definition
# (``.fallback-content``: its description and tables of inputs and outputs).
_HELP_SHOWN = """([panel, header, title]) => {
    const root = document.querySelector(panel);
    const content = root?.querySelector('.node-help-content');
    const heading = root?.querySelector(header)?.innerText?.trim();
    if (!content || heading !== title || content.querySelector('.p-progressspinner')) return null;
    const markdown = content.querySelector('.markdown-content'), fallback = content.querySelector('.fallback-content');
    if (!(markdown && markdown.innerText.trim()) && !fallback) return null;
    return {
        title: heading, markdown: !!markdown, fallback: !!fallback,
        headings: [...content.querySelectorAll('h1, h2, h3, h4')].map(h => h.innerText.trim()),
        code: [...content.querySelectorAll('code')].map(c => c.innerText.trim()),
        text: content.innerText,
    };
}"""
_LIBRARY = ".sidebar-content-container"
# The library's help page opens with a bar: a back arrow, then the node's display name.
_LIBRARY_HELP_BACK = f"{_LIBRARY} button:has(.pi-arrow-left)"
_LIBRARY_HELP_TITLE = "div:has(> button .pi-arrow-left) > span"
_PROPERTIES = "[data-testid=properties-panel]"

# Where a node's title bar is on the screen, and whether the canvas is what a click there hits.
_NODE_TITLE_POINT = """(id) => {
    const n = app.graph.getNodeById(id);
    const title = LiteGraph.NODE_TITLE_HEIGHT ?? 30;
    const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + Math.min(n.size[0] / 2, 60), n.pos[1] - title / 2]);
    const r = app.canvas.canvas.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + x, r.top + y);
    return [r.left + x, r.top + y, hit === app.canvas.canvas ? null : (hit?.outerHTML ?? 'nothing').slice(0, 200)];
}"""

_SELECTED = """(id) => Object.keys(app.canvas.selected_nodes ?? {}).map(Number).includes(id)"""

# A dialog the page shows about node types it does not know: current frontend ("This workflow has
# missing nodes"), 2024 web UI ("When loading the graph, the following node types were not found").
_MISSING_NODES_DIALOGS = """() => [...document.querySelectorAll('.p-dialog, .comfy-modal')]
    .filter(d => d.getClientRects().length > 0 && getComputedStyle(d).visibility !== 'hidden')
    .map(d => d.innerText.trim())
    .filter(t => /missing nodes|node types were not found/i.test(t))"""


class WebUI:
    """One browser page on one ComfyUI server; use as a context manager."""

    def __init__(self, url: str, *, timeout_s: float = 60.0):
        self.url = url
        self.timeout_ms = timeout_s * 1000
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self.viewport = dict(VIEWPORT)
        self._pw = self._browser = self._context = self.page = None

    def __enter__(self) -> WebUI:
        from playwright.sync_api import sync_playwright

        executable = chromium_path()
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=executable, headless=True, timeout=self.timeout_ms,
                args=CHROMIUM_FLAGS)  # Playwright gives it a fresh, temporary profile
            self._new_page()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _new_page(self) -> None:
        """A page in a new browser context: no graph or settings left in storage by an earlier page."""
        if self._context is not None:
            self._context.close()
        self._context = self._browser.new_context(viewport=self.viewport)
        self.page = self._context.new_page()
        self.page.set_default_timeout(self.timeout_ms)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def __exit__(self, *exc) -> None:
        try:
            if self._context is not None:
                self._context.close()
            if self._browser is not None:
                self._browser.close()
        finally:
            if self._pw is not None:
                self._pw.stop()

    # -- what a user does ---------------------------------------------------------------------

    def open(self) -> None:
        """A fresh page on the server, ready when the node definitions are in."""
        self._new_page()
        self.page.goto(self.url, wait_until="load")
        self.page.wait_for_function(_APP_READY)

    def drop_workflow(self, path: Path, text: str | None = None) -> None:
        """Drag a workflow file onto the canvas; wait until the page shows its nodes."""
        import json

        text = path.read_text() if text is None else text
        transfer = self.page.evaluate_handle(_DROP_FILE, [text, path.name])
        self.page.dispatch_event("canvas#graph-canvas", "drop", {"dataTransfer": transfer})
        self.page.wait_for_function(_SHOWS_NODES, arg=_node_ids_and_types(json.loads(text)))

    def nodes(self) -> list[dict]:
        return self.page.evaluate(_GRAPH_NODES)

    def set_widget(self, node_id: int, name: str, value) -> None:
        done = self.page.evaluate(_SET_WIDGET, [node_id, name, value])
        if "error" in done:
            raise AssertionError(f"node {node_id} widget '{name}': {done['error']}"
                                 + (f" (offered: {done['offered']})" if "offered" in done else ""))

    def queue(self) -> dict:
        """Press Ctrl+Enter; return the server's answer to the page's POST /prompt."""
        self.page.evaluate("() => document.activeElement?.blur?.()")
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as got:
            self.page.keyboard.press("Control+Enter")
        response = got.value
        try:
            body = response.json()
        except ValueError:
            body = response.text()
        return {"status": response.status, "body": body}

    def wait_for_text(self, text: str, timeout_s: float) -> str:
        """Wait until the page shows ``text`` somewhere (e.g. in a toast); return the element's whole text."""
        shown = self.page.get_by_text(text, exact=False).first
        shown.wait_for(state="visible", timeout=timeout_s * 1000)
        return shown.inner_text()

    def wait_for_images(self, node_ids: list[int], timeout_s: float) -> None:
        self.page.wait_for_function(_NODES_SHOW_IMAGES, arg=node_ids, timeout=timeout_s * 1000)

    def template_pictures(self, category: str, names: list[str]) -> dict[str, list[int]]:
        """Current frontend: open the template browser on ``category``; wait for the cards ``names``
        and return {card name: [width, height] of its loaded picture}."""
        self.page.evaluate("async () => { await app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
        self.page.get_by_text(category, exact=True).click()
        shown = ("() => Object.fromEntries([...document.querySelectorAll('img[alt]')]"
                 ".filter(i => i.complete && i.naturalWidth > 0).map(i => [i.alt, [i.naturalWidth, i.naturalHeight]]))")
        pictures: dict[str, list[int]] = {}
        for name in names:  # a card loads its picture once scrolled into view (more cards than fit on the page)
            if name not in pictures:
                self.page.get_by_text(name, exact=True).first.scroll_into_view_if_needed()
                self.page.wait_for_function(f"(name) => name in ({shown})()", arg=name)
            pictures.update(self.page.evaluate(shown))
        return pictures

    def pick_template(self, name: str, workflow: dict) -> None:
        """Click a template card; wait until the canvas holds the workflow's nodes."""
        self.page.get_by_text(name, exact=True).first.click()
        self.page.wait_for_function(_SHOWS_NODES, arg=_node_ids_and_types(workflow))

    def saved_widget_values(self) -> dict[int, list]:
        """Each node's widget values as the page would save the graph now."""
        return {int(k): v for k, v in self.page.evaluate(_SAVED_WIDGET_VALUES).items()}

    def hide_chrome(self) -> bool:
        """Current frontend only: focus mode, no minimap, canvas info or canvas menu (for thumbnails)."""
        return self.page.evaluate(_HIDE_CHROME)

    def missing_nodes_dialogs(self) -> list[str]:
        """The text of each dialog on the page that reports node types missing from this ComfyUI."""
        return self.page.evaluate(_MISSING_NODES_DIALOGS)

    def wait_for_missing_nodes_dialog(self, timeout_s: float) -> str:
        self.page.wait_for_function(f"() => ({_MISSING_NODES_DIALOGS})().length > 0", timeout=timeout_s * 1000)
        return self.missing_nodes_dialogs()[0]

    # -- node help (current frontend) ------------------------------------------------------------

    def node_library_help(self, display_name: str, screenshot: Path | None = None) -> dict:
        """Current frontend: open the node library (sidebar "Nodes"), type the node's name in its
        search box, press the "?" (Learn more) button of the node's entry and return what the help
        page shows (``_HELP_SHOWN``: title, markdown or fallback, headings, code names, text); then
        the help page's back arrow, so the library is ready for the next node (``screenshot``: a
        picture of the page with the help shown, taken before)."""
        page = self.page
        if not page.locator(".node-lib-search-box").is_visible():
            page.locator(".node-library-tab-button").click()
        page.locator(".node-lib-search-box input").fill(display_name)
        entry = page.locator(".node-lib-node-container").filter(
            has=page.get_by_text(display_name, exact=True)).first
        entry.hover()
        entry.locator(".help-button").click()
        shown = self._wait_for_help(_LIBRARY, _LIBRARY_HELP_TITLE, display_name)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        page.locator(_LIBRARY_HELP_BACK).first.click()
        page.locator(".node-lib-search-box").wait_for(state="visible")
        return shown

    def node_info_panel(self, node_id: int, title: str) -> dict:
        """Current frontend: click the node's title bar on the canvas (it becomes the selection),
        press the selection toolbox's info button and return what the right-hand panel's Info tab
        shows (as ``node_library_help``); ``title`` is the node's title as the panel heads it."""
        page = self.page
        page.evaluate(_FIT_VIEW, 120)  # every node in view, with room above for the toolbox
        page.wait_for_timeout(100)
        x, y, covered = page.evaluate(_NODE_TITLE_POINT, node_id)
        if covered:
            raise AssertionError(f"node {node_id}'s title bar is covered by {covered}")
        page.mouse.click(x, y)
        page.wait_for_function(_SELECTED, arg=node_id)
        page.locator("[data-testid=info-button]").click()
        return self._wait_for_help(_PROPERTIES, "h3", title)

    def _wait_for_help(self, panel: str, header: str, title: str, timeout_s: float = 20) -> dict:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            return self.page.wait_for_function(_HELP_SHOWN, arg=[panel, header, title],
                                               timeout=timeout_s * 1000).json_value()
        except PlaywrightTimeout:
            shown = self.page.evaluate("(panel) => document.querySelector(panel)?.innerText ?? '(no panel)'", panel)
            raise AssertionError(f"no help for '{title}' within {timeout_s:.0f} s; the panel shows: "
                                 f"{shown[:600]!r}") from None

    def screenshot(self, path: Path, margin: int = 60) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.evaluate(_FIT_VIEW, margin)
        self.page.wait_for_timeout(300)  # a couple of frames for images and links
        self.page.screenshot(path=str(path))
        return path


@contextmanager
def browsing(url: str, artifacts: Path):
    """A WebUI on ``url``; the browser console and page errors are kept in ``artifacts`` when it closes."""
    with WebUI(url) as ui:
        yield ui
        (artifacts / "browser-console.log").write_text(
            "\n".join(ui.console + [f"pageerror: {e}" for e in ui.page_errors]) + "\n")
