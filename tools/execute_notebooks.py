#!/usr/bin/env python
"""Execute notebooks in place so their outputs (figures, tables) are stored for the docs.

    python tools/execute_notebooks.py                    # every notebook in nbs/, slow cells skipped
    python tools/execute_notebooks.py nbs/04_sid.ipynb --slow

Progress bars are off (MINIONEREC_QUIET), plotly figures are stored as their JSON mime bundle only (the docs
renderer turns them into HTML that loads plotly.js once per page), widgets by their HTML fallback (their state needs
a kernel). Run `nbdev_clean` afterwards.
"""
import argparse, os, re, sys, time
from pathlib import Path
import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parents[1]
SLOW = re.compile(r'^\s*#\s*\|\s*slow\s*$', re.M)

class SkipSlow(ExecutePreprocessor):
    run_slow = False
    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == 'code' and SLOW.search(cell.source) and not self.run_slow:
            return cell, resources          # keep whatever outputs it had
        return super().preprocess_cell(cell, resources, index)

def execute(path: Path, slow: bool = False, timeout: int = 600):
    nb = nbformat.read(path, as_version=4)
    ep = SkipSlow(timeout=timeout, kernel_name='python3', store_widget_state=False); ep.run_slow = slow
    t = time.time()
    ep.preprocess(nb, {'metadata': {'path': str(path.parent)}})
    for c in nb.cells:               # a widget's view needs its kernel: keep its HTML fallback (or text) in the stored output
        for o in c.get('outputs', []): o.get('data', {}).pop('application/vnd.jupyter.widget-view+json', None)
    nb.metadata.pop('widgets', None)
    tmp = path.with_suffix('.ipynb.tmp'); nbformat.write(nb, tmp); os.replace(tmp, path)
    return time.time() - t

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('paths', nargs='*')
    ap.add_argument('--slow', action='store_true', help='also run cells marked #| slow')
    a = ap.parse_args()
    os.environ.update(MINIONEREC_QUIET='1', PLOTLY_RENDERER='plotly_mimetype', MPLBACKEND='module://matplotlib_inline.backend_inline',
                      OMP_WAIT_POLICY='PASSIVE', HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false')
    paths = [Path(p) for p in a.paths] or sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    failed = []
    for p in paths:
        try: print(f'{p.name}: {execute(p, a.slow):.0f}s', flush=True)
        except Exception as e: failed.append(p.name); print(f'{p.name}: FAILED {type(e).__name__}: {str(e)[-800:]}', flush=True)
    if failed: sys.exit(f'failed: {failed}')
