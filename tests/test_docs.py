"""The docs: README.md is generated from nbs/index.ipynb, every notebook renders to HTML with its figures, and the
pages and the SID explorer's standalone HTML load in headless Chromium without JavaScript errors."""
import json, re, sys
from pathlib import Path
import nbformat, numpy as np, pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO/'tools'))
import render_docs, browser_check

needs_chromium = pytest.mark.skipif(browser_check.chromium_path() is None,
                                    reason='chromium not installed (tools/ci_system_deps.sh installs it with apt-get)')

def test_readme_is_generated_from_index(tmp_path, monkeypatch):
    monkeypatch.setattr(render_docs, 'ROOT', tmp_path)
    render_docs.write_readme(nbformat.read(REPO/'nbs'/'index.ipynb', as_version=4))
    assert (tmp_path/'README.md').read_text() == (REPO/'README.md').read_text(), \
        'README.md is stale: run `python tools/render_docs.py --readme-only` and commit'

IMG = re.compile(r'<img[^>]+src="data:image/png')

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

def test_every_notebook_renders(rendered):
    out, pages = rendered
    names = {p.stem for p in pages}
    for nb in render_docs.notebooks():
        assert nb.stem in names, nb
        html = (out/f'{nb.stem}.html').read_text()
        assert '#| export' not in html and '#|export' not in html      # directives never reach the page
        n_img = image_outputs(nbformat.read(nb, as_version=4))
        assert len(IMG.findall(html)) >= n_img, (nb.name, n_img)

@needs_chromium
def test_pages_load_without_js_errors(rendered):
    out, pages = rendered
    def n_img(html): return len(IMG.findall(html))
    with_figures = [p for p in pages if n_img(p.read_text()) or 'plotly-graph-div' in p.read_text()]
    for p in sorted(set(with_figures) | {out/'index.html'}):
        res = browser_check.check_page(p)
        assert res['errors'] == [], res
        html = p.read_text()
        assert res['png_figures'] >= n_img(html), res            # every figure is still in the DOM after scripts ran
        if 'plotly-graph-div' in html: assert res['plotly_rendered'] > 0, res

@needs_chromium
def test_sid_explorer_html_renders(tmp_path):
    from minionerec.data import make_synthetic, SyntheticConfig
    from minionerec.sid import build_sid_index, save_explorer_html
    data = make_synthetic(SyntheticConfig.tiny())
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, 4, data.n_items), rng.integers(0, 8, data.n_items), rng.integers(0, 16, data.n_items)], 1)
    index = build_sid_index(codes, codebook_sizes=[4, 8, 16])
    path = save_explorer_html(index, data.items, tmp_path/'sid_explorer.html')
    res = browser_check.check_page(path)
    assert res['errors'] == [], res
    assert res['plotly_divs'] >= 1 and res['plotly_rendered'] > 0, res
