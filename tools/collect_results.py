#!/usr/bin/env python
"""Copy the small result files of a pipeline run into the docs, so chapters can show real-data figures.

    python tools/collect_results.py runs/industrial nbs/results/industrial

Copies the report, metrics, SFT/GRPO histories and the rollout reward values (a few hundred KB in all); the
notebooks read them with paths relative to `nbs/` and re-plot them, so the figures are notebook outputs like any other.
"""
import shutil, sys
from pathlib import Path

FILES = ['config.yaml', 'report/report.md', 'report/results.md', 'evaluate/metrics.json', 'sft/history.csv', 'sft/DONE.json',
         'sid/sid_report.json', 'rl/history.csv', 'rl/evals.csv', 'rl/comparison.json', 'rl/reward_values.csv.gz',
         'rl/reward_distributions.csv', 'rl/DONE.json', 'rl/grpo.yaml', 'rl/reward.yaml']

def main(run:str, dest:str):
    run, dest = Path(run), Path(dest)
    missing = [f for f in FILES if not (run/f).exists()]
    if missing: raise SystemExit(f'{run} lacks {missing}: run the whole pipeline first (minionerec pipeline --config ...)')
    tmp = dest.with_name(dest.name + '.tmp')
    if tmp.exists(): shutil.rmtree(tmp)
    for f in FILES:
        (tmp/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(run/f, tmp/f)
    if dest.exists(): shutil.rmtree(dest)
    tmp.rename(dest)
    print(f'copied {len(FILES)} files from {run} to {dest} ({sum((dest/f).stat().st_size for f in FILES) / 1e3:.0f} kB)')

if __name__ == '__main__':
    if len(sys.argv) != 3: raise SystemExit(__doc__)
    main(*sys.argv[1:])
