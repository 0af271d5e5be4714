#!/usr/bin/env python
"""Render the docs without Quarto: README.md from nbs/index.ipynb and an offline site, one page per notebook.

    python tools/render_docs.py                 # README.md + _docs/ (open _docs/index.html from disk: no server needed)
    python tools/render_docs.py --execute       # execute notebooks first (fills figures; slow cells stay skipped)
    python tools/render_docs.py --readme-only
    python tools/render_docs.py --fetch-assets  # only fetch the vendored KaTeX into tools/.cache (CI does this first)

The site: chapter numbers, titles and parts in a sidebar (from nbs/sidebar.yml, which Quarto reads too), the current
page marked, prev/next links, a client-side search over every page (a prebuilt index + tools/docs_assets/search.js) and
math typeset by KaTeX, which is taken from the npm registry at build time (`npm pack katex@KATEX_VERSION`, checked
against its pinned integrity hash; its MIT license is copied next to it in _docs/_static/katex/). Nothing is loaded from
a network when a page is read: plotly.js comes from the installed plotly package, widgets show their HTML fallback.
Where Quarto is installed, `nbdev_docs` (driven by nbs/_quarto.yml + nbs/sidebar.yml) is the alternative.
nbdev directives are honoured: `#| hide` cells are dropped, `#| echo: false` hides the source but keeps outputs, and
directive lines never reach the page.
"""
import argparse, base64, copy, hashlib, html, json, os, re, shutil, subprocess, sys, tarfile, tempfile
from html.parser import HTMLParser
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).resolve().parent
KATEX_VERSION = '0.19.1'
KATEX_INTEGRITY = 'sha512-jG8uKntjSEcm2EpQOh0XturpPuuC9r3Sq5HLHdsFdWZT27E672SF19QEi+of0/YeOy15lDgRhKvr5614uRrEfA=='
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(.*)$')

def directives(src: str) -> dict:
    out = {}
    for line in src.splitlines():
        m = DIRECTIVE.match(line)
        if not m: continue
        body = m.group(1).strip()
        if ':' in body: k, v = body.split(':', 1); out[k.strip()] = v.strip()
        elif body: out[body.split()[0]] = ' '.join(body.split()[1:]) or True
    return out

def strip_directives(src: str) -> str:
    return '\n'.join(l for l in src.splitlines() if not DIRECTIVE.match(l)).strip('\n')

PLOTLY_MIME = 'application/vnd.plotly.v1+json'

def plotly_outputs_to_html(c) -> bool:
    "Replace plotly mime outputs of cell `c` by static-page HTML (plotly.js is loaded once per page). True if any."
    import json as _json, plotly.io as pio
    found = False
    for o in c.get('outputs', []):
        data = o.get('data', {})
        if PLOTLY_MIME in data:
            fig = pio.from_json(_json.dumps(data[PLOTLY_MIME]))
            o['data'] = {'text/html': pio.to_html(fig, include_plotlyjs=False, full_html=False)}
            found = True
    return found

def prepare(nb):
    "A copy of `nb` as the reader should see it."
    nb = copy.deepcopy(nb); cells = []
    nb.metadata.pop('widgets', None)
    nb.metadata['uses_plotly'] = False
    for c in nb.cells:
        if c.cell_type != 'code': cells.append(c); continue
        if plotly_outputs_to_html(c): nb.metadata['uses_plotly'] = True
        for o in c.get('outputs', []):             # a widget needs a kernel: show its HTML fallback (or its text) instead
            o.get('data', {}).pop(WIDGET_MIME, None)
        d = directives(c.source)
        if 'hide' in d or 'default_exp' in d or d.get('include') == 'false': continue
        if d.get('echo') == 'false' or 'hide_input' in d:
            c.metadata['jupyter'] = {'source_hidden': True}; c.metadata.setdefault('tags', []).append('remove_input')
        c.source = strip_directives(c.source)
        if not c.source and not c.get('outputs'): continue
        cells.append(c)
    nb.cells = cells
    return nb

# Records JavaScript errors and failed resource loads (a missing script, stylesheet, image or font) in an attribute,
# so a DOM dump or a DevTools session sees them (tools/browser_check.py).
ERROR_HOOK = ("<script>window.__jserr=[];function __rec(m){window.__jserr.push(String(m));"
              "document.documentElement.setAttribute('data-jserr',JSON.stringify(window.__jserr));}"
              "window.addEventListener('error',function(e){var t=e.target;"
              "if(t&&t!==window&&(t.src||t.href)){__rec('failed to load '+(t.src||t.href));}else{__rec(e.message||e.type)}},true);"
              "window.addEventListener('unhandledrejection',function(e){__rec(e.reason)});</script>")

def notebooks():
    return sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))

def title_of(nb, fallback):
    for c in nb.cells:
        if c.cell_type == 'markdown':
            m = re.search(r'^#\s+(.+)$', c.source, re.M)
            if m: return m.group(1).strip()
    return fallback

def write_readme(nb):
    from nbconvert import MarkdownExporter
    body, _ = MarkdownExporter().from_notebook_node(prepare(nb))
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    header = '<!-- generated by tools/render_docs.py from nbs/index.ipynb: edit the notebook, not this file -->\n\n'
    (ROOT/'README.md').write_text(header + body, encoding='utf-8')
    return ROOT/'README.md'

def chapter_number(stem: str) -> str:
    "'04a_sid_explorer' -> '4a', 'index' -> ''."
    m = re.match(r'^(\d+)([a-z]?)_', stem)
    return f'{int(m.group(1))}{m.group(2)}' if m else ''

def chapters(nbs=None) -> list[dict]:
    "The reading order: nbs/sidebar.yml's entries ({stem, num, label, section}), then any notebook it does not list."
    import yaml
    nbs = list(nbs or notebooks()); by_stem = {p.stem: p for p in nbs}; out = []
    side = ROOT/'nbs'/'sidebar.yml'
    contents = (yaml.safe_load(side.read_text()) or {}).get('website', {}).get('sidebar', {}).get('contents', []) if side.exists() else []
    def walk(entries, section):
        for e in entries:
            if isinstance(e, str): e = {'href': e}
            if 'section' in e: walk(e.get('contents', []), e['section']); continue
            stem = Path(e.get('href', '')).stem
            if stem not in by_stem: raise SystemExit(f'{side}: {e.get("href")!r} is not a notebook in nbs/')
            num = chapter_number(stem); label = e.get('text') or stem
            if num and label.startswith(num + ' · '): label = label[len(num) + 3:]
            out.append(dict(stem=stem, num=num, label=label, section=section))
    walk(contents, None)
    listed = {c['stem'] for c in out}
    for p in nbs:
        if p.stem not in listed:
            nb = nbformat.read(p, as_version=4)
            out.append(dict(stem=p.stem, num=chapter_number(p.stem), label=title_of(nb, p.stem), section='Not in nbs/sidebar.yml'))
    return out

def page_name(stem: str) -> str: return f'{stem}.html'

def full_title(ch: dict) -> str: return f'{ch["num"]} · {ch["label"]}' if ch['num'] else ch['label']

def nav_html(chs, current: str) -> str:
    "The sidebar: site title, search box, parts with numbered chapters, the current page marked (aria-current)."
    out = ['<nav class="site-nav" aria-label="chapters"><a class="site-title" href="index.html">minionerec</a>',
           '<input id="site-search" type="search" placeholder="Search the docs" aria-label="Search the docs" autocomplete="off">',
           '<ul id="site-search-results" class="search-results" hidden></ul>']
    for k, ch in enumerate(chs):
        if k == 0 or ch['section'] != chs[k - 1]['section']:
            if k: out.append('</ol>')
            if ch['section']: out.append(f'<div class="nav-section">{html.escape(ch["section"])}</div>')
            out.append('<ol>')
        cur = ' aria-current="page"' if ch['stem'] == current else ''
        out.append(f'<li><a href="{page_name(ch["stem"])}"{cur}><span class="num">{ch["num"]}</span>'
                   f'<span>{html.escape(ch["label"])}</span></a></li>')
    out.append('</ol></nav>')
    return ''.join(out)

def pager_html(chs, i: int) -> str:
    "Previous / next chapter links at the bottom of page `i`."
    def link(j, cls, word):
        if not 0 <= j < len(chs): return ''
        c = chs[j]
        return f'<a class="{cls}" rel="{cls}" href="{page_name(c["stem"])}"><small>{word}</small><b>{html.escape(full_title(c))}</b></a>'
    return f'<nav class="page-nav" aria-label="previous and next">{link(i - 1, "prev", "← Previous")}{link(i + 1, "next", "Next →")}</nav>'

class _Sections(HTMLParser):
    "Text of a rendered page split at its h1-h3 headings (outputs, scripts and styles left out): the search index."
    SKIP = ('script', 'style', 'title')
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections, self.skip, self.out_depth, self.div_depth, self.head = [], 0, None, 0, None
        self.cur = dict(t='', a='', x=[])
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'div':
            self.div_depth += 1
            if self.out_depth is None and 'jp-Cell-outputWrapper' in (a.get('class') or ''): self.out_depth = self.div_depth
        if tag in self.SKIP: self.skip += 1
        if tag in ('h1', 'h2', 'h3') and self.out_depth is None:
            self.flush(); self.head = []; self.cur = dict(t='', a=a.get('id', ''), x=[])
    def handle_endtag(self, tag):
        if tag in self.SKIP: self.skip = max(0, self.skip - 1)
        if tag == 'div':
            if self.out_depth == self.div_depth: self.out_depth = None
            self.div_depth -= 1
        if tag in ('h1', 'h2', 'h3') and self.head is not None:
            self.cur['t'] = ' '.join(''.join(self.head).split()).rstrip('¶ '); self.head = None
    def handle_data(self, data):
        if self.skip or self.out_depth is not None: return
        (self.head if self.head is not None else self.cur['x']).append(data)
    def flush(self):
        x = ' '.join(''.join(self.cur['x']).split())
        if self.cur['t'] or x: self.sections.append(dict(t=self.cur['t'], a=self.cur['a'], x=x[:4000]))

def page_sections(body: str) -> list[dict]:
    p = _Sections(); p.feed(body); p.flush()
    return p.sections

def katex_dir(fetch: bool = True) -> Path:
    "The unpacked KaTeX npm package (tools/.cache/katex-VERSION/package), fetched with `npm pack` and checked against its hash."
    dest = TOOLS/'.cache'/f'katex-{KATEX_VERSION}'
    if (dest/'package'/'dist'/'katex.min.js').exists(): return dest/'package'
    if not fetch: raise FileNotFoundError(f'{dest}: KaTeX not fetched (python tools/render_docs.py --fetch-assets)')
    npm = shutil.which('npm')
    if npm is None: raise SystemExit('npm not found: it fetches KaTeX for the docs (apt-get install npm, or run tools/ci_system_deps.sh)')
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([npm, 'pack', f'katex@{KATEX_VERSION}', '--pack-destination', tmp, '--silent'], capture_output=True, text=True)
        tgz = Path(tmp)/f'katex-{KATEX_VERSION}.tgz'
        if r.returncode != 0 or not tgz.exists(): raise SystemExit(f'npm pack katex@{KATEX_VERSION} failed: {r.stderr.strip()[-500:]}')
        got = 'sha512-' + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        if got != KATEX_INTEGRITY: raise SystemExit(f'katex-{KATEX_VERSION}.tgz: integrity {got} != pinned {KATEX_INTEGRITY}')
        part = dest.with_name(dest.name + '.part'); shutil.rmtree(part, ignore_errors=True); part.mkdir(parents=True)
        with tarfile.open(tgz) as t: t.extractall(part, filter='data')
        shutil.rmtree(dest, ignore_errors=True); os.replace(part, dest)
    return dest/'package'

def copy_static(out_dir: Path) -> Path:
    "_static/: KaTeX (+ its license), plotly.js (from the installed plotly), the site's CSS and scripts."
    import plotly
    st = out_dir/'_static'; kx = katex_dir()
    shutil.rmtree(st/'katex', ignore_errors=True)
    (st/'katex'/'contrib').mkdir(parents=True)
    for f in ('katex.min.js', 'katex.min.css', 'contrib/auto-render.min.js'): shutil.copy(kx/'dist'/f, st/'katex'/f)
    shutil.copytree(kx/'dist'/'fonts', st/'katex'/'fonts')
    shutil.copy(kx/'LICENSE', st/'katex'/'LICENSE')
    shutil.copy(Path(plotly.__file__).parent/'package_data'/'plotly.min.js', st/'plotly.min.js')
    for f in (TOOLS/'docs_assets').iterdir(): shutil.copy(f, st/f.name)
    return st

def _write(dest: Path, text: str):
    tmp = dest.with_name(dest.name + '.tmp'); tmp.write_text(text, encoding='utf-8'); os.replace(tmp, dest)

def render_html(out_dir: Path, execute: bool = False):
    "Write every page, the static assets and the search index into `out_dir`; returns the pages written."
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor
    out_dir.mkdir(parents=True, exist_ok=True)
    chs = chapters()
    loaded = {}
    for ch in chs:
        p = ROOT/'nbs'/f'{ch["stem"]}.ipynb'; nb = nbformat.read(p, as_version=4)
        if execute:
            os.environ.setdefault('MPLBACKEND', 'Agg')
            ExecutePreprocessor(timeout=1800, kernel_name='python3').preprocess(nb, {'metadata': {'path': str(p.parent)}})
        loaded[ch['stem']] = nb
    copy_static(out_dir)
    exporter = HTMLExporter(template_name='lab_offline', extra_template_basedirs=[str(TOOLS/'docs_template')])
    exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    written, pages, sections = [], [], []
    for i, ch in enumerate(chs):
        pnb = prepare(loaded[ch['stem']])
        body, _ = exporter.from_notebook_node(pnb, resources={'metadata': {'name': f'{full_title(ch)} – minionerec'}})
        sections += [dict(p=i, **s) for s in page_sections(body)]          # the page's own text, before the sidebar is added
        head = ERROR_HOOK + ('<script src="_static/plotly.min.js"></script>' if pnb.metadata.get('uses_plotly') else '')
        body = re.sub(r'(<head[^>]*>)', lambda m: m.group(1) + head, body, count=1)
        label = f'<div class="chapter-label">{"Chapter " + html.escape(full_title(ch)) if ch["num"] else html.escape(ch["label"])}</div>'
        body = re.sub(r'(<body[^>]*>)\s*<main>', lambda m: m.group(1) + nav_html(chs, ch['stem']) + '<main class="site-main">' + label, body, count=1)
        foot = pager_html(chs, i) + '<footer class="site-footer">Math by KaTeX (MIT license: _static/katex/LICENSE).</footer>'
        body = body.replace('</main>', foot + '</main><script src="_static/search.js"></script>', 1)
        pages.append(dict(u=page_name(ch['stem']), t=full_title(ch)))
        dest = out_dir/page_name(ch['stem']); _write(dest, body); written.append(dest)
    _write(out_dir/'_static'/'search_index.js', 'window.MINIONEREC_SEARCH = ' + json.dumps(dict(pages=pages, sections=sections), separators=(',', ':')) + ';\n')
    return written

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT/'_docs'))
    ap.add_argument('--execute', action='store_true', help='execute notebooks before rendering')
    ap.add_argument('--readme-only', action='store_true')
    ap.add_argument('--fetch-assets', action='store_true', help='only fetch KaTeX into tools/.cache (needs npm)')
    a = ap.parse_args()
    if a.fetch_assets: print('KaTeX in', katex_dir()); sys.exit(0)
    idx = ROOT/'nbs'/'index.ipynb'
    if not idx.exists(): sys.exit(f'{idx}: missing (README.md is made from it)')
    print('wrote', write_readme(nbformat.read(idx, as_version=4)))
    if not a.readme_only:
        for w in render_html(Path(a.out), a.execute): print('wrote', w)
