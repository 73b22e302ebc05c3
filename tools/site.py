"""Build the documentation site as static HTML from the notebooks, without Quarto.

The published site is built by nbdev and Quarto (`nbdev-docs`, see
.github/workflows/). Quarto cannot be installed everywhere, so this script renders
the same notebooks itself, following nbdev's rules for what a page shows:

- the first markdown cell's `# Title` and `> summary` become the page title and subtitle;
- markdown cells are rendered as CommonMark with tables and raw HTML;
- code cells are shown with their source, minus `#|` directive lines and lines
  ending in `#|hide_line`. Cells marked `hide`, `export`, `exporti` or
  `default_exp`, or with `include: false`, are left out, and so is the source of
  cells marked `echo: false`;
- after each `export` or `exports` cell, every public function and class it
  defines is documented from the installed package with nbdev's `show_doc`
  renderer: the signature with its parameter comments, then the docstring;
- backticked names of documented symbols link to their documentation, and links
  to other notebooks (`other.ipynb#anchor`) point at their pages;
- a ```` ```{mermaid} ```` block, which Quarto draws, is shown as its source in a
  collapsed block, and a `<details class="diagram-text">` block next to it (a
  plain-text drawing of the same diagram) is opened;
- images that markdown cells reference are copied next to the page.

The notebooks are stored without outputs, so the script runs each one first, in a
subprocess per notebook with nbdev-test's rules for which cells run, and shows the
outputs under their cells: a component's HTML (FastHTML's markdown form of an FT),
printed text, images. `--no-execute` skips this and shows the source only. The
navigation comes from nbs/sidebar.yml, the same file the
Quarto site uses. A notebook missing from it is listed under "Other pages" with
a warning. After writing the pages the script checks that every relative link
and image points at a file it wrote, and that every `#anchor` exists on its page.

Usage:
    python tools/site.py                 # write _docs/ (git-ignored)
    python tools/site.py --out DIR       # write DIR instead
    python tools/site.py --no-execute    # do not run the notebooks: no outputs, faster
    python tools/site.py --check-nbdev   # run nbdev's docs processing, which nbdev-docs runs before Quarto
Exit status: 0 when the site was written and every internal link resolved (or, with
--check-nbdev, when every notebook passed nbdev's processing), 1 otherwise.
"""
from __future__ import annotations

import argparse
import ast
import html
import importlib
import inspect
import json
import os
import posixpath
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import unquote, urlsplit

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

REPO_ROOT = Path(__file__).resolve().parent.parent
NBS_DIR = REPO_ROOT / "nbs"
SIDEBAR_FILE = NBS_DIR / "sidebar.yml"
DEFAULT_OUT = REPO_ROOT / "_docs"
PACKAGE = "cjm_fasthtml_job_monitor"
SITE_TITLE = "cjm-fasthtml-job-monitor"
GIT_URL = "https://github.com/cj-mills/cjm-fasthtml-job-monitor"
GIT_BRANCH = "main"

# nbdev's rules (nbdev.processors, 3.3.26): these directives hide a code cell's source,
# and these make nbdev document the names the cell defines.
HIDING_DIRECTIVES = {"hide", "export", "exporti", "default_exp"}
DOCUMENTING_DIRECTIVES = {"export", "exports", "exec_doc"}
SKIPPED_NAME = re.compile(r"^[_.]")  # nbdev skips files and folders whose names start with _ or .
DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
HIDE_LINE = re.compile(r"#\|\s*hide_line\s*$")
MERMAID_INFO = re.compile(r"^\{mermaid\}")


class SiteError(Exception):
    "A problem that stops the build, such as a notebook that is not valid JSON."


# --- Reading notebooks ----------------------------------------------------------------------


def find_notebooks(nbs_dir: Path = NBS_DIR) -> list[str]:
    "List the notebooks under `nbs_dir` that nbdev builds pages for, as sorted POSIX paths relative to it."
    found = []
    for path in nbs_dir.rglob("*.ipynb"):
        relative = path.relative_to(nbs_dir)
        if any(SKIPPED_NAME.match(part) for part in relative.parts):
            continue
        if ".ipynb_checkpoints" in relative.parts:
            continue
        found.append(relative.as_posix())
    return sorted(found)


def split_directives(source: str) -> tuple[dict[str, str], str]:
    "Split a code cell into its leading `#|` directives ({name: value}) and the rest of its source."
    directives: dict[str, str] = {}
    lines = source.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        match = DIRECTIVE.match(line)
        if match:
            directives[match.group(1).replace("-", "_")] = match.group(2)
        elif line.strip():
            break
        index += 1
    body = [line for line in lines[index:] if not HIDE_LINE.search(line)]
    return directives, "\n".join(body).strip("\n")


def defined_names(source: str) -> list[str]:
    "Return the names nbdev documents for a cell: public top-level functions and classes, `Class.method` for `@patch`."
    from nbdev.processors import showdoc_nm

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_") and not node.name.startswith("__"):
            continue
        name = showdoc_nm(node)
        names.extend(name if isinstance(name, list) else [name])
    return names


@dataclass
class Block:
    "One piece of a page: markdown text, code to show, or the API documentation of one symbol."
    kind: str  # "markdown", "code" or "api"
    text: str  # Markdown source, code source, or the documented name
    anchor: str = ""  # Heading id of an "api" block
    cell_id: str = ""  # Notebook cell id of a "code" block, to attach its outputs
    outputs: list = field(default_factory=list)  # Outputs of a "code" block, in nbformat's form


@dataclass
class Page:
    "One notebook prepared for rendering."
    source: str  # Notebook path relative to nbs/, POSIX form
    title: str
    summary: str
    blocks: list[Block] = field(default_factory=list)
    module: Optional[str] = None  # Exported module name from `#| default_exp`

    @property
    def href(self) -> str:
        "Output path of the page relative to the site root."
        return self.source[: -len(".ipynb")] + ".html"


def heading_slug(text: str) -> str:
    "Make a heading id the way Pandoc (and so Quarto) does: lowercase, keep letters, digits, _ - and ., spaces to -."
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\s.-]", "", text)
    text = re.sub(r"\s+", "-", text)
    text = re.sub(r"^[^a-z]+", "", text)
    return text or "section"


def _split_title(markdown: str) -> tuple[str, str, str]:
    "Take the `# Title` and `> summary` lines from the top of the first markdown cell; return (title, summary, rest)."
    lines = markdown.strip().splitlines()
    title = summary = ""
    if lines and lines[0].startswith("# "):
        title = lines.pop(0)[2:].strip()
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines and lines[0].startswith("> "):
            summary = lines.pop(0)[2:].strip()
    return title, summary, "\n".join(lines).strip()


def read_page(nbs_dir: Path, relative: str) -> Page:
    "Read one notebook into a `Page`, applying nbdev's rules for what the docs show."
    path = nbs_dir / relative
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SiteError(f"{path}: not a readable notebook ({error}).") from error

    cells = [cell for cell in notebook.get("cells", []) if cell.get("cell_type") in ("markdown", "code")]
    page = Page(source=relative, title="", summary="")
    for position, cell in enumerate(cells):
        source = "".join(cell.get("source", []))
        if cell["cell_type"] == "markdown":
            if position == 0 and not page.title:
                page.title, page.summary, source = _split_title(source)
            stripped = source.strip()
            if stripped.startswith("#") and stripped.endswith(" -"):
                continue  # nbdev drops headings that end with " -"
            if stripped:
                page.blocks.append(Block("markdown", stripped))
            continue

        directives, body = split_directives(source)
        if "default_exp" in directives:
            page.module = directives["default_exp"].split()[0] if directives["default_exp"] else None
        hidden = bool(HIDING_DIRECTIVES & directives.keys()) or directives.get("include", "").lower() == "false"
        shows_source = directives.get("echo", "").lower() != "false"
        if body and not hidden and "nbdev_export()" not in body:
            page.blocks.append(Block("code", body if shows_source else "", cell_id=cell.get("id", "")))
        documented = DOCUMENTING_DIRECTIVES & directives.keys()
        if documented and "hide" not in directives and directives.get("include", "").lower() != "false":
            for name in defined_names(body):
                page.blocks.append(Block("api", name, anchor=heading_slug(name)))
    if not page.title:
        page.title = Path(relative).stem.replace("_", " ").capitalize()
    return page


# --- Navigation ------------------------------------------------------------------------------


@dataclass
class NavItem:
    "A link to a page, or a section with children."
    text: str
    href: Optional[str] = None  # Page path relative to the site root
    children: list["NavItem"] = field(default_factory=list)


def _nav_entry(entry: Any, titles: dict[str, str], listed: list[str]) -> NavItem:
    "Turn one Quarto sidebar entry (a path, {href, text} or {section, contents}) into a `NavItem`."
    if isinstance(entry, str):
        entry = {"href": entry}
    if not isinstance(entry, dict):
        raise SiteError(f"{SIDEBAR_FILE}: invalid sidebar entry {entry!r}: expected a path or a mapping.")
    href = entry.get("href")
    page = None
    if href is not None:
        if href not in titles:
            raise SiteError(f"{SIDEBAR_FILE}: {href} is not a notebook under nbs/; fix or remove the entry.")
        listed.append(href)
        page = href[: -len(".ipynb")] + ".html"
    if "section" in entry:
        children = [_nav_entry(child, titles, listed) for child in entry.get("contents") or []]
        return NavItem(str(entry["section"]), page, children)
    if href is None:
        raise SiteError(f"{SIDEBAR_FILE}: entry {entry!r} has neither href nor section.")
    return NavItem(str(entry.get("text") or titles[href]), page)


def read_navigation(pages: list[Page], sidebar_file: Path = SIDEBAR_FILE) -> tuple[list[NavItem], list[str]]:
    "Build the navigation from the Quarto sidebar file; return it and the notebooks the file leaves out."
    titles = {page.source: page.title for page in pages}
    contents: list = []
    if sidebar_file.is_file():
        data = yaml.safe_load(sidebar_file.read_text(encoding="utf-8")) or {}
        contents = ((data.get("website") or {}).get("sidebar") or {}).get("contents") or []
    listed: list[str] = []
    nav = [_nav_entry(entry, titles, listed) for entry in contents]
    missing = [page.source for page in pages if page.source not in listed]
    if missing:
        nav.append(NavItem("Other pages", None, [NavItem(titles[m], m[: -len(".ipynb")] + ".html") for m in missing]))
    return nav, missing


# --- API documentation -----------------------------------------------------------------------


def resolve_symbol(module_name: str, dotted: str) -> Any:
    "Import `PACKAGE.module_name` and return the object named `dotted` in it (`Class.method` allowed)."
    obj: Any = importlib.import_module(f"{PACKAGE}.{module_name}")
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _source_link(obj: Any) -> str:
    "Return the GitHub URL of the line that defines `obj`, or an empty string when it cannot be found."
    try:
        target = inspect.unwrap(obj)
        file = Path(inspect.getsourcefile(target)).resolve()
        line = inspect.getsourcelines(target)[1]
        relative = file.relative_to(REPO_ROOT).as_posix()
    except (TypeError, OSError, ValueError):
        return ""
    return f"{GIT_URL}/blob/{GIT_BRANCH}/{relative}#L{line}"


def render_api_markdown(module_name: str, dotted: str) -> str:
    "Render the `show_doc` markdown of one symbol: a level-3 heading, the signature and the docstring."
    from nbdev.showdoc import MarkdownRenderer

    obj = resolve_symbol(module_name, dotted)
    text = MarkdownRenderer(obj, name=dotted)._repr_markdown_()
    link = _source_link(obj)
    source = f'<a class="source-link" href="{html.escape(link)}">source</a>\n\n' if link else ""
    heading = "### " + dotted.replace("_", "\\_")  # escaped so that __init__ is not read as bold
    return f"{source}{heading}\n\n{text.strip()}"


# --- Markdown to HTML ------------------------------------------------------------------------


_FORMATTER = HtmlFormatter(nowrap=True)


def highlight_code(code: str, language: str) -> str:
    "Highlight `code` with Pygments as HTML spans; unknown languages are escaped as plain text."
    try:
        lexer = get_lexer_by_name(language or "text")
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, _FORMATTER)


def _code_block(code: str, language: str) -> str:
    label = f' data-lang="{html.escape(language)}"' if language else ""
    return f'<pre class="highlight"{label}><code>{highlight_code(code, language)}</code></pre>\n'


class Renderer:
    """Markdown renderer bound to one page: heading ids, linked symbol names, .ipynb links, collected images.

    `symbols` maps a documented name to its URL relative to the site root.
    """

    def __init__(self, page: Page, symbols: dict[str, str]):
        self.page, self.symbols = page, symbols
        self.images: list[str] = []  # Image paths relative to nbs/, to copy
        self.toc: list[tuple[int, str, str]] = []  # (level, id, text) of h2 and h3 headings
        self._ids: dict[str, int] = {}
        self.md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
        rules = {"fence": self._render_fence, "code_inline": self._render_code_inline,
                 "heading_open": self._render_heading_open, "link_open": self._render_link_open,
                 "image": self._render_image}
        for token_type, method in rules.items():
            # markdown-it-py binds the function it is given to its renderer, so each rule is a plain
            # function that drops that first argument and calls this object's method.
            self.md.add_render_rule(token_type, lambda _renderer, *args, method=method: method(*args))

    def unique_id(self, slug: str) -> str:
        "Return `slug`, or `slug-N` when the page already has that id."
        count = self._ids.get(slug, 0)
        self._ids[slug] = count + 1
        return slug if count == 0 else f"{slug}-{count}"

    def relative_url(self, target: str) -> str:
        "Return the URL of `target` (a path from the site root) relative to this page."
        path, _, fragment = target.partition("#")
        page_folder = posixpath.dirname(self.page.href) or "."
        url = posixpath.relpath(path, page_folder) if path else ""
        return url + (f"#{fragment}" if fragment else "")

    def render(self, markdown: str) -> str:
        return self.md.render(markdown)


    def _render_fence(self, tokens, idx, options, env) -> str:
        token = tokens[idx]
        info = token.info.strip()
        if MERMAID_INFO.match(info):
            return ('<details class="mermaid-source"><summary>Diagram source (Mermaid; the Quarto site draws it)'
                    f'</summary>\n{_code_block(token.content, "text")}</details>\n')
        language = info.split()[0] if info else ""
        return _code_block(token.content, language.strip("{}"))

    def _render_code_inline(self, tokens, idx, options, env) -> str:
        content = tokens[idx].content
        code = f"<code>{html.escape(content)}</code>"
        name = content[:-2] if content.endswith("()") else content
        open_links = 0
        for token in tokens[:idx]:
            if token.type == "link_open":
                open_links += 1
            elif token.type == "link_close":
                open_links -= 1
        target = self.symbols.get(name)
        if target is None or open_links > 0:  # a link inside a link is invalid HTML
            return code
        return f'<a class="symbol" href="{html.escape(self.relative_url(target))}">{code}</a>'

    def _render_heading_open(self, tokens, idx, options, env) -> str:
        token = tokens[idx]
        inline = tokens[idx + 1]
        text = "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))
        heading_id = self.unique_id(heading_slug(text))
        token.attrSet("id", heading_id)
        level = int(token.tag[1])
        if level in (2, 3):
            self.toc.append((level, heading_id, text))
        return self.md.renderer.renderToken(tokens, idx, options, env)

    def _render_link_open(self, tokens, idx, options, env) -> str:
        token = tokens[idx]
        href = token.attrGet("href") or ""
        parts = urlsplit(href)
        if not parts.scheme and not parts.netloc and parts.path.endswith(".ipynb"):
            token.attrSet("href", parts.path[: -len(".ipynb")] + ".html" + (f"#{parts.fragment}" if parts.fragment else ""))
        return self.md.renderer.renderToken(tokens, idx, options, env)

    def _render_image(self, tokens, idx, options, env) -> str:
        token = tokens[idx]
        src = token.attrGet("src") or ""
        parts = urlsplit(src)
        if not parts.scheme and not parts.netloc and parts.path:
            folder = posixpath.dirname(self.page.source)
            self.images.append(posixpath.normpath(posixpath.join(folder, unquote(parts.path))))
        alt = html.escape("".join(child.content for child in token.children or []))
        return f'<img src="{html.escape(src)}" alt="{alt}">'


def render_blocks(page: Page, renderer: Renderer) -> str:
    "Render a page's blocks to HTML."
    out = []
    for block in page.blocks:
        if block.kind == "markdown":
            body = renderer.render(block.text)
            out.append(body.replace('<details class="diagram-text">', '<details class="diagram-text" open>'))
        elif block.kind == "code":
            source = _code_block(block.text, "python") if block.text else ""
            out.append(f'<div class="cell">{source}{render_outputs(block.outputs, renderer)}</div>')
        else:
            out.append(_render_api_block(page, block, renderer))
    return "\n".join(out)


_MAX_OUTPUT_CHARS = 20_000  # Longer text outputs are cut, with a note


def _output_text(value: Any) -> str:
    "Join nbformat's list-of-lines text, and cut it at `_MAX_OUTPUT_CHARS`."
    text = "".join(value) if isinstance(value, list) else str(value)
    if len(text) > _MAX_OUTPUT_CHARS:
        text = text[:_MAX_OUTPUT_CHARS] + f"\n[output cut: {len(text) - _MAX_OUTPUT_CHARS} more characters]"
    return text


def render_outputs(outputs: list, renderer: Renderer) -> str:
    "Render a cell's outputs: markdown (FastHTML shows an FT as its HTML), images, or escaped text."
    parts = []
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            parts.append(f'<pre class="output">{html.escape(_output_text(output.get("text", "")))}</pre>')
            continue
        data = output.get("data", {})
        if "text/markdown" in data:
            parts.append(f'<div class="output">{renderer.render(_output_text(data["text/markdown"]))}</div>')
        elif "image/png" in data:
            png = "".join(data["image/png"]).strip()
            parts.append(f'<div class="output"><img alt="Cell output" src="data:image/png;base64,{png}"></div>')
        elif "text/plain" in data:
            parts.append(f'<pre class="output">{html.escape(_output_text(data["text/plain"]))}</pre>')
    return "".join(parts)


# Runs one notebook the way nbdev-test does (same cell-skipping rules, `notest` cells skipped,
# the notebook's folder as working directory) and prints {cell id: outputs} as JSON.
_EXECUTE_SCRIPT = """
import json, sys
from pathlib import Path
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.process import NBProcessor
from nbdev.test import _skip_cell
notebook = Path(sys.argv[1])
nb = NBProcessor(notebook, rm_directives=False, process=True).nb
shell = CaptureShell(notebook)
with working_directory(notebook.parent):
    shell.run_all(nb, exc_stop=True, preproc=_skip_cell(nb, ["notest"], None), cell_timeout=600)
sys.stdout.write(json.dumps({cell.get("id", ""): cell.get("outputs", []) for cell in nb.cells
                             if cell.cell_type == "code"}))
"""


def execute_notebook(path: Path, timeout_s: float = 900) -> dict[str, list]:
    "Run the notebook at `path` in a subprocess and return {cell id: outputs}; raise SiteError when a cell fails."
    import subprocess

    env = {**os.environ, "IN_TEST": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", _EXECUTE_SCRIPT, str(path)], capture_output=True, text=True,
                              timeout=timeout_s, cwd=REPO_ROOT, env=env)
    except subprocess.TimeoutExpired as error:
        raise SiteError(f"{path}: running the notebook took longer than {timeout_s:.0f} s.") from error
    if done.returncode != 0:
        raise SiteError(f"{path}: running the notebook failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def attach_outputs(pages: list[Page], nbs_dir: Path, workers: int = 2) -> None:
    "Run every page's notebook and attach the outputs to its code blocks."
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda page: execute_notebook(nbs_dir / page.source), pages)
        for page, outputs in zip(pages, results):
            for block in page.blocks:
                if block.kind == "code": block.outputs = outputs.get(block.cell_id, [])


def _render_api_block(page: Page, block: Block, renderer: Renderer) -> str:
    try:
        markdown = render_api_markdown(page.module or "", block.text)
    except (ImportError, AttributeError) as error:
        print(f"site.py: warning: nbs/{page.source} documents {block.text}, which "
              f"{PACKAGE}.{page.module} does not provide ({error}); run nbdev-export.", file=sys.stderr)
        return ""
    return f'<section class="api" id="api-{html.escape(block.anchor)}">{renderer.render(markdown)}</section>'


# --- Page template ---------------------------------------------------------------------------


def render_nav(items: list[NavItem], renderer: Renderer, current: str) -> str:
    "Render the sidebar as nested lists, marking the current page."
    parts = ["<ul>"]
    for item in items:
        link = ""
        if item.href:
            active = ' aria-current="page"' if item.href == current else ""
            link = f'<a href="{html.escape(renderer.relative_url(item.href))}"{active}>{html.escape(item.text)}</a>'
        if item.children:
            label = link or f'<span class="section-title">{html.escape(item.text)}</span>'
            parts.append(f'<li class="section">{label}{render_nav(item.children, renderer, current)}</li>')
        else:
            parts.append(f"<li>{link}</li>")
    parts.append("</ul>")
    return "".join(parts)


def render_toc(toc: list[tuple[int, str, str]]) -> str:
    if len(toc) < 2:
        return ""
    items = "".join(f'<li class="toc-h{level}"><a href="#{html.escape(anchor)}">{html.escape(text)}</a></li>'
                    for level, anchor, text in toc)
    return f'<nav class="toc" aria-label="On this page"><h2>On this page</h2><ul>{items}</ul></nav>'


def render_page(page: Page, nav: list[NavItem], symbols: dict[str, str]) -> tuple[str, list[str]]:
    "Render the whole HTML document of a page; return it and the images it references."
    renderer = Renderer(page, symbols)
    body = render_blocks(page, renderer)
    css = renderer.relative_url("site.css")
    home = renderer.relative_url("index.html")
    summary = f'<p class="summary">{renderer.md.renderInline(page.summary)}</p>' if page.summary else ""
    title = page.title if page.source == "index.ipynb" else f"{page.title} – {SITE_TITLE}"
    document = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{html.escape(css)}">
</head>
<body>
<header class="site-header"><a href="{html.escape(home)}">{html.escape(SITE_TITLE)}</a></header>
<div class="layout">
<nav class="sidebar" aria-label="Pages">{render_nav(nav, renderer, page.href)}</nav>
<main>
<h1 class="title">{html.escape(page.title)}</h1>
{summary}
{body}
<footer class="source-note">Built from <code>nbs/{html.escape(page.source)}</code> by <code>tools/site.py</code>.</footer>
</main>
{render_toc(renderer.toc)}
</div>
</body>
</html>
"""
    return document, renderer.images


SITE_CSS = """\
:root { --accent: #2c6fbb; --muted: #5f6b7a; --border: #dde3ea; --code-bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.6 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; }
a { color: var(--accent); }
.site-header { padding: .75rem 1.5rem; background: var(--accent); }
.site-header a { color: #fff; font-weight: 600; text-decoration: none; }
.layout { display: grid; grid-template-columns: 16rem minmax(0, 1fr) 14rem; gap: 2rem; padding: 1.5rem; }
.sidebar ul { list-style: none; margin: 0; padding-left: .9rem; }
.sidebar > ul { padding-left: 0; }
.sidebar li { margin: .2rem 0; }
.sidebar .section-title, .sidebar .section > a { font-weight: 600; }
.sidebar a { text-decoration: none; }
.sidebar a[aria-current="page"] { font-weight: 700; color: #1f2328; }
main { min-width: 0; max-width: 52rem; }
h1.title { margin-top: 0; }
.summary { color: var(--muted); font-size: 1.1rem; margin-top: -.5rem; }
pre.highlight { background: var(--code-bg); border: 1px solid var(--border); border-radius: 6px;
  padding: .75rem 1rem; overflow-x: auto; font-size: .875rem; line-height: 1.45; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .9em; }
:not(pre) > code, a.symbol code { background: var(--code-bg); padding: .1em .3em; border-radius: 4px; }
table { border-collapse: collapse; margin: 1rem 0; display: block; overflow-x: auto; }
th, td { border: 1px solid var(--border); padding: .35rem .6rem; text-align: left; vertical-align: top; }
.cell .output { border-left: 3px solid var(--border); padding-left: .75rem; margin: -.25rem 0 1rem; }
.cell pre.output { background: none; border: none; border-left: 3px solid var(--border); border-radius: 0;
  padding: .25rem .75rem; font-size: .8rem; white-space: pre-wrap; }
.cell .output img { max-width: 100%; }
.api { border-top: 1px solid var(--border); margin: 1.5rem 0; padding-top: .5rem; }
.api .source-link { float: right; font-size: .85rem; }
details { margin: 1rem 0; }
details > summary { cursor: pointer; color: var(--muted); }
.toc { font-size: .875rem; position: sticky; top: 1rem; align-self: start; }
.toc h2 { font-size: .9rem; margin: 0 0 .5rem; }
.toc ul { list-style: none; margin: 0; padding: 0; }
.toc .toc-h3 { padding-left: .8rem; }
.toc a { text-decoration: none; }
.source-note { margin-top: 3rem; color: var(--muted); font-size: .85rem; }
@media (max-width: 70rem) { .layout { grid-template-columns: 14rem minmax(0, 1fr); } .toc { display: none; } }
@media (max-width: 45rem) { .layout { grid-template-columns: 1fr; } }
"""


# --- Link check ------------------------------------------------------------------------------


class _LinkCollector(HTMLParser):
    "Collect the element ids and the href and src values of one HTML document."

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("href", "src") and value:
                self.links.append(value)


def check_links(site_dir: Path) -> list[str]:
    "Return one message per relative link or image in `site_dir` whose file or `#anchor` is missing."
    pages: dict[Path, _LinkCollector] = {}
    for path in site_dir.rglob("*.html"):
        collector = _LinkCollector()
        collector.feed(path.read_text(encoding="utf-8"))
        pages[path.resolve()] = collector

    problems = []
    for path, collector in sorted(pages.items()):
        for link in collector.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                continue  # external: not checked here
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            where = path.relative_to(site_dir.resolve())
            if not target.is_file():
                problems.append(f"{where}: link {link!r} points at a missing file")
                continue
            if parts.fragment and target.suffix == ".html":
                if parts.fragment not in pages[target].ids:
                    problems.append(f"{where}: link {link!r} points at a missing anchor")
    return problems


# --- Build -----------------------------------------------------------------------------------


def collect_symbols(pages: Iterable[Page]) -> dict[str, str]:
    """Map each documented name to its page anchor.

    Methods are linked only as `Class.method`, as nbdev does: a bare `execute` in the
    text may mean any plugin's method, not the one documented here.
    """
    symbols: dict[str, str] = {}
    for page in pages:
        for block in page.blocks:
            if block.kind == "api":
                symbols.setdefault(block.text, f"{page.href}#{block.anchor}")
    return symbols


def build_site(out_dir: Path = DEFAULT_OUT, nbs_dir: Path = NBS_DIR, execute: bool = True) -> list[str]:
    "Write the site into `out_dir` (replacing it); return the pages written, relative to it."
    out_dir = Path(out_dir).resolve()
    previous_cwd = Path.cwd()
    os.chdir(REPO_ROOT)  # nbdev's renderers read the project's configuration from the working directory
    try:
        return _build_site(out_dir, nbs_dir, execute)
    finally:
        os.chdir(previous_cwd)


def _build_site(out_dir: Path, nbs_dir: Path, execute: bool) -> list[str]:
    pages = [read_page(nbs_dir, relative) for relative in find_notebooks(nbs_dir)]
    if execute: attach_outputs(pages, nbs_dir)
    if not any(page.source == "index.ipynb" for page in pages):
        raise SiteError(f"{nbs_dir / 'index.ipynb'} is missing: the site needs a landing page.")
    nav, missing = read_navigation(pages)
    for source in missing:
        print(f"site.py: warning: nbs/{source} is not listed in {SIDEBAR_FILE.relative_to(REPO_ROOT)}; "
              "it is linked under 'Other pages'.", file=sys.stderr)
    symbols = collect_symbols(pages)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".site-", dir=out_dir.parent))
    try:
        written = []
        for page in pages:
            document, images = render_page(page, nav, symbols)
            target = staging / page.href
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(document, encoding="utf-8")
            written.append(page.href)
            for image in images:
                source = nbs_dir / image
                if not source.is_file():
                    raise SiteError(f"nbs/{page.source} shows the image {image}, which does not exist under nbs/.")
                (staging / image).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / image)
        (staging / "site.css").write_text(SITE_CSS + "\n" + _FORMATTER.get_style_defs(".highlight"), encoding="utf-8")
        (staging / ".nojekyll").write_text("")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return written


# --- nbdev's own processing --------------------------------------------------------------------


def check_nbdev_processing(nbs_dir: Path = NBS_DIR) -> dict[str, Optional[str]]:
    """Run nbdev's docs processing, the step of `nbdev-docs` before Quarto, on each notebook.

    Returns {notebook: None when it passed, else the error}. nbdev executes every
    exported cell and every cell that contains an import, so that `show_doc` can
    document the exported names. A cell that imports something and uses a name
    defined in a cell that nbdev skips fails here, and would fail the published build.
    The notebooks are copied into a temporary folder first, so nothing is written
    under nbs/ or into the repository's _proc/.
    """
    import warnings

    from nbdev.serve import proc_nbs

    results: dict[str, Optional[str]] = {}
    previous_cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="nbdev-check-") as folder:
        project = Path(folder)
        shutil.copytree(nbs_dir, project / "nbs")
        shutil.copy2(REPO_ROOT / "pyproject.toml", project / "pyproject.toml")
        os.chdir(project)
        try:
            for notebook in find_notebooks(project / "nbs"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # nbdev warns about every cell that mixes imports and code
                    try:
                        proc_nbs(str(project / "nbs"), n_workers=0, force=True,
                                 path_glob=str(project / "nbs" / notebook))
                        results[notebook] = None
                    except Exception as error:  # nbdev wraps whatever the notebook's cell raised
                        # nbdev's message is "Error in notebook: T in cell N :", the cell source, then the error.
                        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
                        results[notebook] = " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else repr(error)
        finally:
            os.chdir(previous_cwd)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder to write the site into, replaced if it exists (default: {DEFAULT_OUT})")
    parser.add_argument("--no-execute", action="store_true",
                        help="do not run the notebooks; show code without outputs (faster)")
    parser.add_argument("--check-nbdev", action="store_true",
                        help="write no site; run nbdev's docs processing on each notebook and list the failures")
    args = parser.parse_args(argv)
    if args.check_nbdev:
        results = check_nbdev_processing()
        for notebook, error in results.items():
            print(f"nbdev-check: {'ok' if error is None else 'FAILED'} nbs/{notebook}" + (f": {error}" if error else ""))
        return 1 if any(results.values()) else 0
    out_dir = args.out.resolve()
    try:
        written = build_site(out_dir, execute=not args.no_execute)
    except SiteError as error:
        print(f"site.py: {error}", file=sys.stderr)
        return 1
    problems = check_links(out_dir)
    for problem in problems:
        print(f"site.py: broken link: {problem}", file=sys.stderr)
    print(f"Wrote {len(written)} pages to {out_dir} (open {out_dir / 'index.html'}).")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
