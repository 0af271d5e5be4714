#!/usr/bin/env python
"""Round-trip notebooks <-> percent-format scripts, so chapters can be authored and reviewed as text.

    python tools/nbpy.py to-nb src.py nbs/03_rqvae.ipynb   # '# %%' code cells, '# %% [markdown]' markdown cells
    python tools/nbpy.py to-py nbs/03_rqvae.ipynb src.py   # the reverse (outputs are dropped)

Markdown cells are written as '# '-prefixed comment lines after the marker.
The notebook (not the script) is the source of truth: nbdev exports from it.
"""
import sys, re, json, hashlib
from pathlib import Path
import nbformat

MD = re.compile(r'^# %% \[markdown\]\s*$')
CODE = re.compile(r'^# %%( .*)?$')

def py_to_nb(src: str) -> nbformat.NotebookNode:
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        lines = list(buf)
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if kind == 'markdown':
            lines = [l[2:] if l.startswith('# ') else (l[1:] if l.startswith('#') else l) for l in lines]
            cells.append(nbformat.v4.new_markdown_cell('\n'.join(lines)))
        elif lines:
            cells.append(nbformat.v4.new_code_cell('\n'.join(lines)))
    for line in src.splitlines():
        if MD.match(line): flush(); kind, buf = 'markdown', []
        elif CODE.match(line): flush(); kind, buf = 'code', []
        else:
            if kind is None: kind = 'code'
            buf.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.nbformat_minor = 5  # cell ids: nbdev 2.4 names exported cells by id, so ids must be stable
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    return nb

def nb_to_py(nb) -> str:
    out = []
    for c in nb.cells:
        if c.cell_type == 'markdown':
            out.append('# %% [markdown]')
            out += ['# ' + l if l else '#' for l in c.source.splitlines()]
        else:
            out.append('# %%'); out += c.source.splitlines()
        out.append('')
    return '\n'.join(out)

if __name__ == '__main__':
    cmd, a, b = sys.argv[1:4]
    if cmd == 'to-nb':
        nb = py_to_nb(Path(a).read_text())
        old = Path(b)
        prev_cells = nbformat.read(old, as_version=4).cells if old.exists() else []
        prev = {c.source: c for c in prev_cells if c.cell_type == 'code'}
        prev_ids = {}
        for c in prev_cells: prev_ids.setdefault((c.cell_type, c.source), []).append(c.get('id'))
        used = set()
        for i, c in enumerate(nb.cells):  # keep outputs of unchanged code cells, and the ids of unchanged cells
            if c.cell_type == 'code' and c.source in prev:
                c.outputs = prev[c.source].get('outputs', []); c.execution_count = prev[c.source].get('execution_count')
            cands = [x for x in prev_ids.get((c.cell_type, c.source), []) if x and x not in used]
            cid = cands[0] if cands else hashlib.sha1(f'{Path(b).name}:{i}:{c.source}'.encode()).hexdigest()[:8]
            while cid in used: cid = hashlib.sha1(cid.encode()).hexdigest()[:8]
            c['id'] = cid; used.add(cid)
        nbformat.write(nb, b, version=4)
    elif cmd == 'to-py': Path(b).write_text(nb_to_py(nbformat.read(a, as_version=4)))
    else: sys.exit(f'unknown command {cmd!r}: expected to-nb or to-py')
