"""The package's import graph follows the reading order (issue 23): a module imports only modules of earlier chapters
(notebook file names in nbs/, sorted, give the order), at module level or inside a function, so there is no import
circle and no re-export shim. Every `from .x import` / `from minionerec.x import` / `import minionerec.x` /
`importlib.import_module` in minionerec/*.py is read with `ast`."""
import ast, json, re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Upward imports allowed for a stated reason, {(module, later module): why}; the test fails when one disappears, so the
# list stays true. Empty: the last four went when compare (12d) and cli (13c) were renumbered and compare_baselines moved
# from baselines (10) to compare, after TIGER (10a) and HSTU (10c).
KNOWN = {}


def reading_order() -> dict:
    "{module: position} from the `default_exp` of each notebook, in file-name order."
    order = {}
    for i, nb in enumerate(sorted((REPO/'nbs').glob('*.ipynb'))):
        for c in json.loads(nb.read_text())['cells']:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
            if m: order[m.group(1)] = i
    return order


def package_imports(path:Path) -> set:
    "Modules of the package that `path` imports anywhere in its code; '<dynamic>' for `importlib.import_module`."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: out |= {mod.split('.')[0]} if mod else {a.name for a in node.names}
            elif mod == 'minionerec': out |= {a.name for a in node.names}
            elif mod.startswith('minionerec.'): out.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('minionerec.')}
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', '')) == 'import_module':
            out.add('<dynamic>')
    return out


def upward_imports() -> set:
    order = reading_order()
    return {(p.stem, t) for p in sorted((REPO/'minionerec').glob('*.py')) if p.stem in order
            for t in package_imports(p) if t == '<dynamic>' or (t in order and order[t] > order[p.stem])}


def test_reader_sees_imports(tmp_path):
    "The reader finds every import form (so a clean result means something)."
    f = tmp_path/'m.py'
    f.write_text('from .a import x\nfrom minionerec.b import y\nimport minionerec.c\nfrom minionerec import d\n'
                 'def f():\n    from .e import z\n    import importlib; importlib.import_module("minionerec.g")\n')
    assert package_imports(f) == {'a', 'b', 'c', 'd', 'e', '<dynamic>'}
    order = reading_order()
    assert order['core'] < order['train'] < order['sft'] < order['grpo'] < order['grpo_trainer'] < order['pipeline']


def test_no_module_imports_a_later_chapter():
    found = upward_imports()
    new = sorted(found - set(KNOWN))
    assert not new, f'modules importing a later chapter (or importlib): {new}'
    gone = sorted(set(KNOWN) - found)
    assert not gone, f'fixed, remove from KNOWN: {gone}'


def test_no_import_circles():
    "No cycle in the package's import graph other than through a KNOWN upward arrow."
    order = reading_order()
    graph = {p.stem: {t for t in package_imports(p) if t in order} for p in (REPO/'minionerec').glob('*.py') if p.stem in order}
    cycles, state = [], {}
    def visit(m, path):
        state[m] = 'open'
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 'open': cycles.append(path[path.index(t):] + [t])
            elif t not in state: visit(t, path + [t])
        state[m] = 'done'
    for m in sorted(graph):
        if m not in state: visit(m, [m])
    assert all(any((a, b) in KNOWN for a, b in zip(c, c[1:])) for c in cycles), cycles
