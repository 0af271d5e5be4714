"""The full fault-injection and corruption sweeps of the pipeline (issue 24) on the tiny preset: tests/faults.py does
the work (the method and the checks are described there and in nbs/13d_faults.ipynb); tests/test_faults.py runs a
CI-sized sample of the same.

  every k      --all: every write operation of every stage, for every fault kind (230 x 4 on tiny: hours of CPU)
  a sample     default: --per N seeded k-th writes for every (stage, fault kind) pair, and --corrupt M seeded
               (artifact, mode) corruptions (--corrupt -1: every artifact in every mode)

Writes OUT/summary.json (every trial and its findings) and OUT/summary.md (the tables nbs/13d_faults.ipynb shows).
Run:  OMP_NUM_THREADS=1 python bench/faults.py --per 1 --corrupt 16 --out nbs/results/faults
"""
from __future__ import annotations
import argparse, json, os, random, re, sys, time
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO/'tests'))
from faults import Sweep, STAGES, KINDS, sample, message, judge, judge_corruption     # tests/faults.py (this file's name is the same: tests/ goes first)

MODES = ('truncate', 'empty', 'garble')

def plan(sweep:Sweep, per:int, every:bool, seed:int) -> list[tuple]:
    "The (stage, k, kind) trials: every k, or `per` seeded k-th writes of each stage for each kind."
    counts, rng, out = sweep.counts(), random.Random(seed), []
    for stage in STAGES:
        for kind in KINDS:
            ks = range(1, counts[stage] + 1)
            out += [(stage, k, kind) for k in (ks if every else sorted(rng.sample(ks, min(per, len(ks)))))]
    return out

def corruptions(sweep:Sweep, n:int, seed:int) -> list[tuple]:
    cases = [(rel, reopen, mode) for rel, reopen in sweep.targets() for mode in MODES]
    return [] if n == 0 else sample(cases, max(n, 0), seed)

def summarise(sweep:Sweep, trials:list, corrupt:list, args, seconds:float) -> dict:
    stopped = [t for t in trials if t['stopped']]
    msg = [t for t in stopped if t['kind'] in ('enospc', 'eio')]
    return {'config': sweep.config, 'seed': args.seed, 'sampling': getattr(args, 'sampling', None) or ('every k' if args.all else f'{args.per} seeded k per (stage, kind)'),
            'planned': getattr(args, 'planned', None), 'writes_per_stage': sweep.counts(), 'reference_seconds': round(getattr(sweep, 'seconds', 0.0), 1), 'seconds': round(seconds),
            'faults_injected': sum(t['fired'] for t in trials), 'trials': len(trials),
            'stages_covered': sorted({t['stage'] for t in trials if t['fired']}, key=STAGES.index),
            'kinds': {k: sum(t['kind'] == k for t in trials) for k in KINDS},
            'stopped_the_run': len(stopped), 'reruns_identical': sum(t['identical'] for t in trials),
            'messages_checked': len(msg), 'messages_named': sum(bool(t['one_line'] and t['named'] == 'file' and t['cause'] and not t['internal']) for t in msg),
            'internal_errors': sum(t['internal'] for t in msg), 'leftovers': sum(bool(t['leftovers']) for t in trials),
            'cache_incomplete': sum(bool(t['cache']) for t in trials), 'outside_changed': sum(bool(t['outside']) for t in trials),
            'corruptions': len(corrupt), 'corruption_outcomes': {o: sum(c['outcome'] == o for c in corrupt) for o in sorted({c['outcome'] for c in corrupt})},
            'findings': [{'fault': f"{t['kind']} at write {t['k']} of {t['stage']} ({t['op']})", 'path': t['path'], 'message': t['line'],
                          'finding': f} for t in trials for f in t['findings']] +
                        [{'fault': f"{c['mode']} {c['artifact']} (stages from {c['reopened']} reopened)", 'path': c['artifact'],
                          'message': c['line'], 'finding': f} for c in corrupt for f in c['findings']],
            'fault_trials': trials, 'corruption_trials': corrupt}

def markdown(s:dict) -> str:
    L = [f"Fault sweep of `minionerec pipeline --config {s['config']}`: {s['sampling']} (seed {s['seed']}), {s['seconds']} s in all.", '',
         '| faults injected | stages covered | stopped the run | reruns identical | disk/I-O messages naming file and cause | internal errors | leftovers | incomplete cache entries | changed outside |',
         '|---:|---|---:|---:|---:|---:|---:|---:|---:|',
         f"| {s['faults_injected']} of {s['trials']} | {', '.join(s['stages_covered'])} | {s['stopped_the_run']} | {s['reruns_identical']} of {s['trials']} | "
         f"{s['messages_named']} of {s['messages_checked']} | {s['internal_errors']} | {s['leftovers']} | {s['cache_incomplete']} | {s['outside_changed']} |", '',
         'Write operations per stage (counting run): ' + ', '.join(f'{k} {v}' for k, v in s['writes_per_stage'].items()) + '.', '',
         *([f"Corruptions: {s['corruptions']}; outcomes: " + ', '.join(f'{k} {v}' for k, v in s['corruption_outcomes'].items()) + '.', '']
           if s['corruptions'] else []),
         '| fault | path | message (last line) | finding |', '|---|---|---|---|']
    esc = lambda x: str(x).replace('|', '\\|').replace('\n', ' ')[:300]
    L += [f"| {esc(f['fault'])} | `{esc(f['path'])}` | {esc(f['message'])} | {esc(f['finding'])} |" for f in s['findings']]
    return '\n'.join(L) + '\n'

def rescore(args):
    "Recompute the message checks and findings of a summary's records (the checks changed, the runs did not)."
    out = Path(args.out); old = json.loads((out/'summary.json').read_text()); sweep = Sweep(args.work)
    for t in old['fault_trials']:
        t.update(message(t['line'], str(sweep.work/t['path']), t['kind'])); t['findings'] = judge(t)
    for c in old['corruption_trials']:
        p = (sweep.work/'cache'/c['artifact'][len('cache/'):]) if c['artifact'].startswith('cache/') else sweep.work/'run'/c['artifact']
        c.update(message(c['line'], str(p))); c['hint'] = bool(re.search(r'--force|rerun (?!with --debug)|run .* again|remove|delete|download', c['line']))
        c['findings'] = judge_corruption(c)
    args.seed, args.sampling, args.planned = old['seed'], old['sampling'], old.get('planned')
    s = summarise(sweep, old['fault_trials'], old['corruption_trials'], args, old['seconds'])
    (out/'summary.json').write_text(json.dumps(s, indent=1) + '\n'); (out/'summary.md').write_text(markdown(s))
    print(markdown(s))

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--work', default='/tmp/minionerec-faults', help='scratch folder (the run folder, the reference, the cache)')
    ap.add_argument('--out', default='nbs/results/faults', help='where summary.json and summary.md go')
    ap.add_argument('--all', action='store_true', help='every k-th write of every stage for every kind')
    ap.add_argument('--per', type=int, default=1, help='seeded k-th writes per (stage, kind) pair (without --all)')
    ap.add_argument('--corrupt', type=int, default=16, help='seeded corruption cases (-1: every artifact in every mode, 0: none)')
    ap.add_argument('--ops', default='', help='instead: every write made by these operations (e.g. torch.save,safetensors.save_file,tokenizer.save)')
    ap.add_argument('--max', type=int, default=0, help='with --ops: a seeded sample of at most this many (0: all)')
    ap.add_argument('--kinds', default=','.join(KINDS)); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--rescore', action='store_true', help="judge OUT/summary.json's records again with the current checks (no runs)")
    args = ap.parse_args()
    if args.rescore: return rescore(args)
    t0 = time.time(); sweep = Sweep(args.work); sweep.reference()
    if args.ops:        # every write made by these operations (e.g. the compiled writers), for every kind asked
        todo = sample([(w['stage'], w['k'], kind) for w in sweep.writes if w['op'] in args.ops.split(',') for kind in args.kinds.split(',')],
                      args.max, args.seed)
        args.sampling = f"every {args.ops} write for {args.kinds}" + (f' (a seeded {args.max})' if args.max else '')
    else: todo = [t for t in plan(sweep, args.per, args.all, args.seed) if t[2] in args.kinds.split(',')]
    cases = corruptions(sweep, args.corrupt, args.seed); args.planned = [len(todo), len(cases)]
    trials, corrupt, out = [], [], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    def save():      # after every trial: an interrupted sweep still leaves the summary of what it did
        s = summarise(sweep, trials, corrupt, args, time.time() - t0)
        (out/'summary.json').write_text(json.dumps(s, indent=1) + '\n'); (out/'summary.md').write_text(markdown(s))
        return s
    for i, t in enumerate(todo):
        r = sweep.trial(*t); trials.append(r); save()
        print(f"[{i + 1}/{len(todo)}] {t[2]} at write {t[1]} of {t[0]} ({r['op']} {r['path']}): rc {r['rc']}, rerun "
              f"{'identical' if r['identical'] else 'DIFFERENT'}; {r['line'][:140]!r}" + ''.join(f'\n    FINDING {f}' for f in r['findings']), flush=True)
    for i, c in enumerate(cases):
        r = sweep.corrupt(*c); corrupt.append(r); save()
        print(f"[{i + 1}/{len(cases)}] {c[2]} {c[0]}: {r['outcome']}; {r['line'][:140]!r}" + ''.join(f'\n    FINDING {f}' for f in r['findings']), flush=True)
    print(markdown(save()))

if __name__ == '__main__': main()
