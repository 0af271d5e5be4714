"""Fault injection and corruption sweeps of the pipeline (issue 24), shared by tests/test_faults.py (a CI-sized sample)
and bench/faults.py (the full sweep).

The method is SQLite's crash and I/O-error testing: a counting run records every write operation of every stage
(tests/fault_shim.py, loaded as `sitecustomize` into the pipeline's subprocess); then, for a chosen (stage, k, kind),
the pipeline runs with the fault injected at the k-th write operation of that stage, and again without a fault. The
checks after each fault:
  (a) the rerun finishes and its artifacts equal an uninterrupted reference run byte for byte, once recorded wall times
      (`seconds`, `*_seconds`, `*_s` fields and columns) and the SID explorer's random element id are set aside;
  (b) nothing outside the run folder changed except the cache, which only ever holds complete entries;
  (c) no temporary files of an interrupted write are left in the run folder;
  (d) a fault that stopped the run printed one last line naming the file and the cause (never `internal error`).
A corruption case truncates, empties or garbles one artifact a later stage reads, reopens the stages after it (their
DONE.json removed: a run killed there) and reruns: the run must name the file (with a recovery hint) or rebuild it and
finish identical to the reference.
"""
from __future__ import annotations
import csv, gzip, hashlib, io, json, os, random, re, shutil, subprocess, sys, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ('prepare', 'embed', 'sid', 'sft', 'evaluate', 'rl', 'dpo', 'report')
KINDS = ('kill', 'enospc', 'eio', 'sigterm')
CAUSE = {'enospc': 'no space left on device', 'eio': 'input/output error'}
FAULT_NAME = {'kill': 'kill', 'sigterm': 'SIGTERM', 'enospc': 'disk-full', 'eio': 'I/O-error'}
_TMP = re.compile(r'\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.tmp|old\.\d+)')      # minionerec.rundir's leftover names
_ANY_TMP = re.compile(r'(\.tmp$|\.old\.\d+$|^\.writing\.|^\.download\.|^\.prepare\.)')

def is_time_key(k) -> bool:
    "A recorded wall time: JSON keys / CSV columns `seconds`, `*_seconds`, `*_s`; report columns 'train s', 'rank s', 'rank s valid'."
    return isinstance(k, str) and (k == 'seconds' or k.endswith('_seconds') or k.endswith('_s') or re.match(r'^(train|rank) s\b', k) is not None)

# ---------------------------------------------------------------- comparing runs with wall times set aside

def _strip(o):
    if isinstance(o, dict): return {k: _strip(v) for k, v in o.items() if not is_time_key(k)}
    if isinstance(o, list): return [_strip(v) for v in o]
    return o

def _csv(text:str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows: return text
    keep = [i for i, h in enumerate(rows[0]) if not is_time_key(h)]
    return '\n'.join(','.join(r[i] for i in keep if i < len(r)) for r in rows)

def _text(text:str) -> str:
    text = re.sub(r'"([A-Za-z_]*(?:seconds|_s))": -?[0-9.e+-]+', r'"\1": T', text)          # JSON quoted in a report
    text = re.sub(r'sx-[0-9a-f]{12}', 'sx-ID', text)                                        # sid_explorer's uuid4 element id
    out, cols = [], None
    for line in text.splitlines():                                                         # markdown tables: time columns
        cells = line.split('|') if line.startswith('|') else None
        if cells is None: cols = None
        elif cols is None: cols = [i for i, c in enumerate(cells) if is_time_key(c.strip())]
        elif cols: cells = [('T' if i in cols and not set(c.strip()) <= set('-:') else c) for i, c in enumerate(cells)]
        out.append('|'.join(cells) if cells is not None else line)
    return '\n'.join(out)

def normalised(p:Path) -> bytes:
    "The bytes of `p` with recorded wall times set aside (JSON keys, CSV columns, markdown table columns)."
    b = p.read_bytes()
    if p.suffix == '.gz': b, name = gzip.decompress(b), p.stem
    else: name = p.name
    try:
        if name.endswith('.json'): return json.dumps(_strip(json.loads(b)), sort_keys=True).encode()
        if name.endswith('.csv'): return _csv(b.decode()).encode()
        if name.endswith(('.md', '.html', '.yaml', '.txt')): return _text(b.decode()).encode()
    except (ValueError, UnicodeDecodeError): pass
    return b

def digest(folder:Path, skip=('.minionerec.lock',)) -> dict:
    "{relative path: sha256 of its normalised bytes} of every file under `folder`."
    out = {}
    for p in sorted(Path(folder).rglob('*')):
        if p.is_file() and p.name not in skip: out[str(p.relative_to(folder))] = hashlib.sha256(normalised(p)).hexdigest()
    return out

def differences(a:dict, b:dict) -> list[str]:
    return ([f'missing {k}' for k in sorted(b.keys() - a.keys())] + [f'extra {k}' for k in sorted(a.keys() - b.keys())] +
            [f'differs {k}' for k in sorted(a.keys() & b.keys()) if a[k] != b[k]])

def leftovers(folder:Path) -> list[str]:
    "Temporary files or folders of an interrupted write still under `folder`."
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*') if _ANY_TMP.search(p.name))

def detemp(path:str) -> str:
    "The path a temporary `.NAME.xxxxxxxx.tmp` component stands for."
    return os.sep.join(_TMP.fullmatch(c)['name'] if _TMP.fullmatch(c) else c for c in path.split(os.sep))

# ---------------------------------------------------------------- judging what a faulted run printed and left

def message(last:str, path:str|None, kind:str|None=None) -> dict:
    """Whether the last line of stderr names the file of the faulted write (`path`, temporary names resolved to the
    artifact they stand for), only a temporary file, or only the folder; and the cause."""
    named = None
    if path and last:
        target = detemp(path)
        if target in last: named = 'file'
        elif any(_TMP.fullmatch(w.strip(':,;()')) for w in last.replace(os.sep, ' ').split()): named = 'temporary file'
        elif os.path.dirname(target) in last: named = 'folder'
    return {'line': last[:400], 'named': named, 'internal': 'internal error' in last,
            'cause': (CAUSE[kind] in last.lower()) if kind in CAUSE else None, 'one_line': last.startswith('minionerec: ')}

def judge(rec:dict) -> list[str]:
    "The findings of one fault trial record (see `Sweep.trial`)."
    f, kind = [], rec['kind']
    if not rec['fired']: f.append(f"the fault was not reached (the run made fewer than {rec['k']} writes in {rec['stage']})")
    if rec['rerun_rc'] != 0: f.append(f"the rerun failed (rc {rec['rerun_rc']}): {rec.get('rerun_line', '')}")
    elif rec['diffs']: f.append(f"the rerun differs from an uninterrupted run: {rec['diffs'][:6]}")
    if rec['leftovers']: f.append(f"leftover temporary files after the rerun: {rec['leftovers'][:4]}")
    if rec['cache']: f.append(f"incomplete cache entries: {rec['cache'][:4]}")
    if rec.get('cache_leftovers'): f.append(f"a temporary file left in the cache after the rerun (no run removes it): {rec['cache_leftovers'][:4]}")
    if rec['outside']: f.append(f"changed outside the run folder: {rec['outside'][:4]}")
    if kind in CAUSE and rec['fired']:
        if not rec['stopped']: f.append(f'a {FAULT_NAME[kind]} fault did not stop the run (rc 0): was it reported?')
        elif rec['internal']: f.append(f'"internal error" for a {FAULT_NAME[kind]} fault: {rec["line"]}')
        elif not (rec['one_line'] and rec['cause']): f.append(f'the last line does not give the cause: {rec["line"]}')
        elif rec['named'] == 'temporary file': f.append(f'the last line names the temporary file, not the artifact: {rec["line"]}')
        elif rec['named'] != 'file': f.append(f'the last line does not name the file: {rec["line"]}')
    if kind == 'sigterm' and rec['fired'] and rec['stopped'] and not rec['one_line']:
        f.append(f"SIGTERM stopped the run without a line (rc {rec['rc']})")
    return f

def judge_corruption(rec:dict) -> list[str]:
    "The outcome (set on `rec` when the run failed) and the findings of one corruption record (see `Sweep.corrupt`)."
    if rec['rc'] != 0:
        rec['outcome'] = ('named' + (' with a hint' if rec['hint'] else '') if rec['named'] == 'file' and not rec['internal'] and rec['one_line']
                          else 'unclear message')
    o = rec['outcome']
    if o == 'finished with different results': return [f"silently different results: {(rec['diffs'] + rec.get('cache_files', []))[:6]}"]
    if o == 'unclear message': return [f"rc {rec['rc']}, the last line does not name {rec['artifact']}: {rec['line']}"]
    if o == 'named': return [f"named but no recovery hint: {rec['line']}"]
    return []

# ---------------------------------------------------------------- running the pipeline with a fault

class Sweep:
    """A work folder holding the shim, one run folder (every trial uses the same path, so paths recorded in artifacts
    match), the uninterrupted reference run and its cache, and the write operations the counting run saw."""
    def __init__(self, work, config:str='tiny', overrides=(), timeout:int=900):
        self.work = Path(work).resolve(); self.work.mkdir(parents=True, exist_ok=True)
        self.run, self.ref, self.ref_cache = self.work/'run', self.work/'reference', self.work/'reference_cache'
        self.cache, self.cwd, self.shim = self.work/'cache', self.work/'cwd', self.work/'shim'
        self.config, self.overrides, self.timeout = config, list(overrides), timeout
        self.shim.mkdir(exist_ok=True); shutil.copy(REPO/'tests'/'fault_shim.py', self.shim/'sitecustomize.py')
        self.cwd.mkdir(exist_ok=True); (self.work/'mpl').mkdir(exist_ok=True)
        self.writes = json.loads((self.work/'writes.json').read_text()) if (self.work/'writes.json').exists() else None

    def env(self, log:Path, fault=None) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith('MINIONEREC_FAULT')}
        e.update(PYTHONPATH=os.pathsep.join([str(self.shim), str(REPO)]), OMP_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE',
                 HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false', MPLBACKEND='Agg', MINIONEREC_QUIET='1',
                 MPLCONFIGDIR=str(self.work/'mpl'), MINIONEREC_CACHE=str(self.cache), PYTHONUNBUFFERED='1',
                 MINIONEREC_FAULT_RUN=str(self.run), MINIONEREC_FAULT_ROOTS=str(self.cache), MINIONEREC_FAULT_LOG=str(log))
        if fault: e.update(MINIONEREC_FAULT_STAGE=fault[0], MINIONEREC_FAULT_AT=str(fault[1]), MINIONEREC_FAULT_KIND=fault[2])
        return e

    def pipeline(self, fault=None, log:Path|None=None) -> subprocess.CompletedProcess:
        "`minionerec pipeline` on the run folder in a fresh interpreter, with `fault` = (stage, k, kind) injected."
        log = log or self.work/'fault.jsonl'
        if log.exists(): log.unlink()
        args = [sys.executable, '-m', 'minionerec.cli', 'pipeline', '--config', self.config, '--run-dir', str(self.run)]
        for o in self.overrides: args += ['--set', o]
        return subprocess.run(args, capture_output=True, text=True, cwd=self.cwd, env=self.env(log, fault), timeout=self.timeout,
                              start_new_session=True)   # a SIGTERM to itself must not reach the test runner

    def reference(self) -> list[dict]:
        "The counting run: an uninterrupted pipeline from nothing (empty cache), kept as the reference; its write operations."
        if self.writes is not None and self.ref.is_dir(): return self.writes
        for d in (self.run, self.cache, self.ref, self.ref_cache): shutil.rmtree(d, ignore_errors=True)
        t = time.time(); r = self.pipeline(log=self.work/'count.jsonl')
        if r.returncode != 0: raise RuntimeError(f'the reference run failed (rc {r.returncode}):\n{r.stderr[-3000:]}')
        self.seconds = time.time() - t
        self.writes = [json.loads(l) for l in (self.work/'count.jsonl').read_text().splitlines()]
        os.replace(self.run, self.ref); os.replace(self.cache, self.ref_cache)
        (self.work/'writes.json').write_text(json.dumps(self.writes))
        return self.writes

    def counts(self) -> dict:
        "{stage: number of write operations} of the counting run."
        out = {}
        for w in self.reference(): out[w['stage']] = out.get(w['stage'], 0) + 1
        return out

    def write(self, stage:str, k:int) -> dict:
        return next(w for w in self.reference() if w['stage'] == stage and w['k'] == k)

    def seed(self, stage:str) -> None:
        "The run folder as an uninterrupted run leaves it just before `stage` starts (earlier stages copied from the reference)."
        for d in (self.run, self.cache): shutil.rmtree(d, ignore_errors=True)
        self.run.mkdir()
        before = STAGES[:STAGES.index(stage)] if stage in STAGES else ()
        if before: shutil.copy2(self.ref/'resolved_config.yaml', self.run/'resolved_config.yaml')
        for s in before: shutil.copytree(self.ref/s, self.run/s)
        if 'embed' in before: shutil.copytree(self.ref_cache, self.cache)       # the embed stage's cache entry
        else: self.cache.mkdir()

    def _outside(self) -> dict:
        "What a run must not touch: its working directory and the work folder's other entries."
        return digest(self.cwd) | {f'work/{p.name}': 'dir' if p.is_dir() else 'file' for p in self.work.iterdir()
                                   if p.name not in ('run', 'cache', 'fault.jsonl', 'mpl')}

    def _cache_ok(self) -> tuple[list[str], list[str]]:
        "(incomplete entries: cache files that differ from the reference's file of that name, temporary files left in the cache)."
        ref, got = digest(self.ref_cache), digest(self.cache)
        tmp = [k for k in sorted(got) if _ANY_TMP.search(Path(k).name)]
        return [f'{k}' + (' (not a reference entry)' if k not in ref else ' (differs from the complete entry)')
                for k in sorted(got) if got[k] != ref.get(k) and k not in tmp], tmp

    def _message(self, r, path:str|None, kind:str|None=None) -> dict:
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
        return message(lines[-1] if lines else '', path, kind)

    def trial(self, stage:str, k:int, kind:str) -> dict:
        "Inject `kind` at the k-th write operation of `stage`, then rerun without a fault; every check's outcome and the findings."
        w = self.write(stage, k); t = time.time()
        self.seed(stage); outside = self._outside()
        r1 = self.pipeline((stage, k, kind))
        fired = [json.loads(l) for l in (self.work/'fault.jsonl').read_text().splitlines()] if (self.work/'fault.jsonl').exists() else []
        rec = {'stage': stage, 'k': k, 'kind': kind, 'op': w['op'], 'path': os.path.relpath(w['path'], self.work),
               'fired': bool(fired), 'rc': r1.returncode, **self._message(r1, w['path'], kind)}
        rec['stopped'] = r1.returncode != 0
        cache_after_fault = self._cache_ok()[0]
        r2 = self.pipeline()
        rec['rerun_rc'] = r2.returncode
        rec['diffs'] = differences(digest(self.run), digest(self.ref)) if r2.returncode == 0 else []
        rec['identical'] = r2.returncode == 0 and not rec['diffs']
        cache, tmp = self._cache_ok()
        rec['leftovers'] = leftovers(self.run); rec['cache'] = sorted(set(cache_after_fault + cache))
        rec['cache_leftovers'] = tmp
        rec['outside'] = differences(self._outside(), outside)
        rec['seconds'] = round(time.time() - t, 1)
        if r2.returncode != 0: rec['rerun_line'] = (r2.stderr.strip().splitlines() or [''])[-1][:400]
        rec['findings'] = judge(rec)
        return rec

    # ------------------------------------------------------------ corrupting what a later stage reads

    def targets(self) -> list[tuple[str, str]]:
        "(artifact, first stage to reopen) for every file a later stage (or the same stage, resuming) reads."
        out = []
        for rel in sorted(digest(self.ref)):
            top, name = rel.split('/')[0], rel.split('/')[-1]
            if top not in STAGES or top == 'report': continue
            nxt = STAGES[STAGES.index(top) + 1]
            if name == 'DONE.json': out.append((rel, top))                                # the stage itself is judged by it
            elif top == 'prepare' and '/data/' in f'/{rel}': out.append((rel, nxt))
            elif rel in ('embed/embeddings.npy', 'sid/index.json', 'evaluate/metrics.json', 'evaluate/ranks.csv', 'rl/metrics.json'):
                out.append((rel, nxt))
            elif top in ('sft', 'rl') and rel.split('/')[1] in ('last',): out.append((rel, top))   # resume state
            elif rel.startswith('sft/best/'): out.append((rel, 'evaluate'))
        out += [(f'cache/{rel}', 'embed') for rel in sorted(digest(self.ref_cache))]
        return out

    def corrupt(self, rel:str, reopen:str, mode:str) -> dict:
        "Corrupt `rel` (truncate / empty / garble) in a copy of the reference whose stages from `reopen` on are incomplete; rerun."
        t = time.time()
        for d in (self.run, self.cache): shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.ref, self.run); shutil.copytree(self.ref_cache, self.cache)
        for s in STAGES[STAGES.index(reopen):]:
            if (self.run/s/'DONE.json').exists() and f'{s}/DONE.json' != rel: (self.run/s/'DONE.json').unlink()
        p = self.cache/rel[len('cache/'):] if rel.startswith('cache/') else self.run/rel
        b = p.read_bytes()
        if mode == 'truncate': b = b[:len(b)//2]
        elif mode == 'empty': b = b''
        else: m = len(b)//2; b = b[:m] + bytes(x ^ 0xA5 for x in b[m:m + 64]) + b[m + 64:]
        p.write_bytes(b)
        r = self.pipeline()
        rec = {'artifact': rel, 'mode': mode, 'reopened': reopen, 'rc': r.returncode, **self._message(r, str(p))}
        rec['hint'] = bool(re.search(r'--force|rerun (?!with --debug)|run .* again|remove|delete|download', rec['line']))
        rec['diffs'] = differences(digest(self.run), digest(self.ref)) if r.returncode == 0 else []
        cache = sum(self._cache_ok(), [])
        if r.returncode == 0 and not rec['diffs'] and not cache: rec['outcome'] = 'rebuilt, identical'
        elif r.returncode == 0 and rec['diffs'] == [f'differs {rel}'] and not cache:   # no stage of this rerun read it: not a finding
            rec['outcome'] = 'left in place, not read'
        elif r.returncode == 0: rec['outcome'] = 'finished with different results'
        else: rec['outcome'] = None
        rec['cache_files'] = cache
        rec['findings'] = judge_corruption(rec)
        rec['leftovers'] = leftovers(self.run); rec['seconds'] = round(time.time() - t, 1)
        return rec

def sample(population:list, n:int, seed:int) -> list:
    "A seeded sample of `n` items (all of them when n is 0 or more than there are), in population order."
    if not n or n >= len(population): return list(population)
    keep = set(random.Random(seed).sample(range(len(population)), n))
    return [x for i, x in enumerate(population) if i in keep]
