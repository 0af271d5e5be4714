"""The docs: README.md is generated from nbs/index.ipynb; the site renders every notebook with a numbered sidebar,
prev/next, search and KaTeX, and opens offline in headless Chromium with no failed or external request; the SID
explorer (in the docs and as the sid stage's standalone page) finds an item typed into its search box."""
import re, sys
from pathlib import Path
import nbformat, numpy as np, pytest, yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO/'tools'))
import render_docs, browser_check

def _can_drive():
    try: import websocket  # noqa: F401
    except ImportError: return False
    return browser_check.chromium_path() is not None

needs_chromium = pytest.mark.skipif(not _can_drive(), reason='chromium or websocket-client missing (tools/ci_system_deps.sh installs chromium)')

def test_readme_is_generated_from_index(tmp_path, monkeypatch):
    monkeypatch.setattr(render_docs, 'ROOT', tmp_path)
    render_docs.write_readme(nbformat.read(REPO/'nbs'/'index.ipynb', as_version=4))
    assert (tmp_path/'README.md').read_text() == (REPO/'README.md').read_text(), \
        'README.md is stale: run `python tools/render_docs.py --readme-only` and commit'

def test_sidebar_lists_every_chapter_for_both_renderers():
    side = yaml.safe_load((REPO/'nbs'/'sidebar.yml').read_text())['website']['sidebar']['contents']
    quarto = yaml.safe_load((REPO/'nbs'/'_quarto.yml').read_text())
    assert 'sidebar.yml' in quarto['metadata-files']
    assert re.search(r'^custom_sidebar = True$', (REPO/'settings.ini').read_text(), re.M)   # nbdev_docs keeps our sidebar.yml
    chs = render_docs.chapters()
    unlisted = [c['stem'] for c in chs if c['section'] == 'Not in nbs/sidebar.yml']
    assert unlisted == [], f'add these chapters to nbs/sidebar.yml: {unlisted}'
    assert [c['stem'] for c in chs][0] == 'index' and len(chs) == len(render_docs.notebooks())
    assert {c['num'] for c in chs} >= {'0', '3a', '4a', '12d', '13c'} and side[0]['href'] == 'index.ipynb'

IMG = re.compile(r'<img[^>]+src="data:image/png')
REMOTE = re.compile(r'<(?:script|link|img|iframe)[^>]+(?:src|href)="(?:https?:)?//', re.I)

def image_outputs(nb) -> int:
    n = 0
    for c in nb.cells:
        if c.cell_type != 'code' or re.search(r'^\s*#\|\s*hide\s*$', c.source, re.M): continue
        n += sum('image/png' in o.get('data', {}) for o in c.get('outputs', []))
    return n

@pytest.fixture(scope='module')
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs')
    return out, render_docs.render_html(out)

def test_every_notebook_renders_offline(rendered):
    out, pages = rendered
    names = {p.stem for p in pages}
    for nb in render_docs.notebooks():
        assert nb.stem in names, nb
        page = (out/f'{nb.stem}.html').read_text()
        assert '#| export' not in page and '#|export' not in page           # directives never reach the page
        assert len(IMG.findall(page)) >= image_outputs(nbformat.read(nb, as_version=4)), nb.name
        assert not REMOTE.search(page), (nb.name, REMOTE.search(page))     # nothing loaded from a network
        assert 'require.js' not in page and 'mathjax' not in page.lower() and 'html-manager' not in page
    lic = (out/'_static'/'katex'/'LICENSE').read_text()
    assert 'MIT License' in lic and 'Khan Academy' in lic
    idx = (out/'_static'/'search_index.js').read_text()
    assert idx.startswith('window.MINIONEREC_SEARCH = ') and 'build_sid_index' in idx

@needs_chromium
def test_pages_load_offline_with_math_and_figures(rendered):
    out, pages = rendered
    def prose(stem):   # markdown without code: a shell line's "$(...)" ... "$(...)" is not math
        md = '\n'.join(c.source for c in nbformat.read(REPO/'nbs'/f'{stem}.ipynb', as_version=4).cells if c.cell_type == 'markdown')
        return re.sub(r'`[^`\n]*`', '', re.sub(r'```.*?```', '', md, flags=re.S))
    with_math = {p.stem for p in pages if re.search(r'\$\$|\$[^$\s][^$]*\$', prose(p.stem))}
    assert '03_rqvae' in with_math
    with browser_check.Browser() as b:
        for p in pages:
            res = browser_check.check_page(p, b)
            assert res['errors'] == [] and res['external'] == [], res
            assert res['png_figures'] >= len(IMG.findall(p.read_text())), res     # figures still in the DOM after scripts ran
            if res['plotly_divs']: assert res['plotly_rendered'] > 0, res
            assert res['math_errors'] == 0 and res['raw_math'] == 0, res
            if p.stem in with_math: assert res['math'] > 0, res                  # KaTeX typeset the page's equations

@needs_chromium
def test_sidebar_prev_next_and_search(rendered):
    out, _ = rendered
    with browser_check.Browser() as b:
        b.goto(out/'04_sid.html')
        assert b.eval('document.querySelector(".site-nav a[aria-current=page]").textContent') == '4Semantic IDs'
        assert b.eval('document.querySelector(".site-nav").textContent').count('4a') == 1
        prev, nxt = b.eval('[...document.querySelectorAll(".page-nav a")].map(a => a.getAttribute("href"))')
        assert (prev, nxt) == ('03a_rqkmeans.html', '04a_sid_explorer.html')
        b.click('.page-nav a.next'); b.wait_for('document.readyState == "complete" && location.pathname.endsWith("04a_sid_explorer.html")')
        b.goto(out/'index.html')
        assert b.eval('[...document.querySelectorAll(".page-nav a")].map(a => a.className)') == ['next']
        b.type('#site-search', 'collision free builder')
        hits = b.wait_for('[...document.querySelectorAll("#site-search-results a")].map(a => a.getAttribute("href"))')
        assert any(h.startswith('04_sid.html#') for h in hits), hits
        b.type('#site-search', 'zzqqxx')
        assert 'no match' in b.wait_for('document.querySelector("#site-search-results").textContent')
        b.type('#site-search', 'build_sid_index'); b.wait_for('!!document.querySelector("#site-search-results a")')
        first = b.eval('document.querySelector("#site-search-results a").getAttribute("href")')
        b.press('Enter'); b.wait_for(f'location.href.endsWith({first!r})')
        assert b.errors == [] and b.external() == []

def _explorer_index():
    from minionerec.synthetic import make_synthetic, SyntheticConfig
    from minionerec.sid import build_sid_index
    data = make_synthetic(SyntheticConfig.tiny())
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, 4, data.n_items), rng.integers(0, 4, data.n_items), rng.integers(0, 8, data.n_items)], 1)
    return data.items, codes, build_sid_index(codes, codebook_sizes=[4, 4, 8])

@needs_chromium
def test_sid_explorer_standalone_finds_a_typed_title(tmp_path):
    from minionerec.sid_explorer import save_explorer_html, explorer_data, search_items
    items, codes, index = _explorer_index()
    path = save_explorer_html(index, items, tmp_path/'sid_explorer.html', raw_codes=codes)
    titles = items.title.tolist()
    k = next(i for i in range(len(titles)) if titles.count(titles[i]) == 1 and i in index.build_info['moved'])
    with browser_check.Browser() as b:
        b.goto(path)
        b.type('.sx-search', titles[k])
        listed = b.wait_for('[...document.querySelectorAll(".sx-results li")].map(li => +li.dataset.item)')
        assert listed == [k]
        b.press('Enter')
        assert b.wait_for('document.querySelector(".sx-card .sx-sid")?.textContent') == index.sid(k)
        assert b.eval('document.querySelector(".sx-card").textContent').count('moved by the collision-free builder') == 1
        on = b.eval('[...document.querySelectorAll(".sx-col .sx-row.sx-on")].map(r => +r.dataset.code)')
        assert on == list(index.code(k))                                  # the item's path, one highlighted code per level
        assert b.eval('document.querySelector(".sx-table tr.sx-on").dataset.item') == str(k)
        # the column rows that are not on the path are the siblings, with their titles
        sibs = b.eval('document.querySelectorAll(".sx-col")[0].querySelectorAll(".sx-row").length')
        assert sibs == len(index.prefix_trie().children(()))
        b.click('.sx-col[data-level="0"] .sx-row:not(.sx-on)')             # a click on another first code lists its items
        c = b.eval('+document.querySelector(".sx-col[data-level=\\"0\\"] .sx-row.sx-on").dataset.code')
        n_rows = b.eval('document.querySelectorAll(".sx-table tbody tr").length')
        assert n_rows == min(100, index.prefix_trie().count((c,)))
        b.click('.sx-tab:nth-child(2)')
        assert b.eval('document.querySelectorAll(".sx-stats tr").length') == index.n_levels + 1
        data = explorer_data(index, items)
        for q in ('pipette', '12', index.sid(3)[:12], 'no such thing'):   # the page's search = search_items
            b.type('.sx-search', q)
            got = b.eval('[...document.querySelectorAll(".sx-results li[data-item]")].map(li => +li.dataset.item)')
            assert got == search_items(data, q), q
        assert b.errors == [] and b.external() == [] and b.eval('document.documentElement.getAttribute("data-jserr")') is None

@needs_chromium
def test_sid_explorer_in_the_docs(rendered):
    out, _ = rendered
    with browser_check.Browser() as b:
        b.goto(out/'04a_sid_explorer.html')
        assert b.eval('document.querySelectorAll(".sx .sx-search").length') >= 1, 'the explorer is missing from the page'
        b.type('.sx-search', 'pipette tips')
        b.wait_for('!!document.querySelector(".sx-results li[data-item]")')
        b.press('Enter')
        sid = b.wait_for('document.querySelector(".sx-card .sx-sid")?.textContent')
        title = b.eval('document.querySelector(".sx-card .sx-title").textContent')
        assert re.fullmatch(r'(<[a-d]_\d+>){3,4}', sid) and 'pipette tips' in title.lower(), (sid, title)
        assert b.errors == [] and b.external() == []

LIVE_NB = '''import numpy as np
from minionerec.synthetic import make_synthetic, SyntheticConfig
from minionerec.sid import build_sid_index
from minionerec.sid_explorer import sid_explorer
d = make_synthetic(SyntheticConfig.tiny()); rng = np.random.default_rng(0)
codes = np.stack([rng.integers(0, 4, d.n_items), rng.integers(0, 4, d.n_items), rng.integers(0, 8, d.n_items)], 1)
idx = build_sid_index(codes, codebook_sizes=[4, 4, 8])
ex = sid_explorer(idx, d.items)
ex'''

@needs_chromium
def test_sid_explorer_is_a_live_widget_in_jupyterlab(tmp_path):
    "JupyterLab (a local server on 127.0.0.1) runs the widget: a search in the view reaches Python, and `show` from Python moves the view."
    import os, shutil, signal, socket, subprocess, time, urllib.request
    if shutil.which('jupyter') is None or subprocess.run(['jupyter', 'lab', '--version'], capture_output=True).returncode: pytest.skip('jupyterlab not installed')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(LIVE_NB), nbformat.v4.new_code_cell('print("PYSTATE", ex.item, ex.query)'),
                                         nbformat.v4.new_code_cell('ex.show(7); print("SHOWN", idx.sid(7))')])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, tmp_path/'live.ipynb')
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])), 'JUPYTER_RUNTIME_DIR': str(tmp_path/'rt')}
    server = subprocess.Popen(['jupyter', 'lab', '--allow-root', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--IdentityProvider.token=',
                               '--ServerApp.password=', '--LabApp.expose_app_in_browser=True', f'--ServerApp.root_dir={tmp_path}',
                               '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(240):
            try: urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status', timeout=2); break
            except Exception: time.sleep(0.5)
        app = 'window.jupyterapp'
        def run_cell(i): b.eval(f'(() => {{ const nb = {app}.shell.currentWidget.content; nb.activeCellIndex = {i}; return {app}.commands.execute("notebook:run-cell"); }})()')
        def output(text):
            return b.wait_for(f'[...document.querySelectorAll(".jp-OutputArea-output pre")].map(e => e.textContent).find(t => t.includes({text!r})) || ""', 120)
        with browser_check.Browser(1280, 1000, timeout=180) as b:
            b.goto(f'http://127.0.0.1:{port}/lab/tree/live.ipynb', settle=2)
            b.wait_for(f'!!{app} && !!{app}.shell.currentWidget && !!{app}.shell.currentWidget.sessionContext?.session?.kernel', 180)
            b.wait_for(f'{app}.shell.currentWidget.sessionContext.session.kernel.status == "idle"', 180)
            run_cell(0)
            b.wait_for('!!document.querySelector(".jp-OutputArea .sx .sx-search")', 180)   # rendered by anywidget, not the HTML fallback
            b.type('.jp-OutputArea .sx .sx-search', 'pipette')
            b.wait_for('!!document.querySelector(".sx-results li[data-item]")', 30)
            first = int(b.eval('document.querySelector(".sx-results li[data-item]").dataset.item'))
            b.press('Enter')
            b.wait_for('!!document.querySelector(".sx-card .sx-sid")', 30)
            run_cell(1)
            assert output('PYSTATE').split()[1:] == [str(first), 'pipette']                  # the view's choice reached Python
            run_cell(2)
            sid7 = output('SHOWN').split()[1]
            assert b.wait_for(f'document.querySelector(".sx-card .sx-sid")?.textContent == {sid7!r}', 60)   # and Python moves the view
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try: server.wait(20)
        except subprocess.TimeoutExpired: os.killpg(server.pid, signal.SIGKILL)
