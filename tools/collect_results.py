#!/usr/bin/env python
"""Copy the small result files of a pipeline run into the docs, so chapters can show real-data figures.

    python tools/collect_results.py runs/industrial nbs/results/industrial

Copies the report, metrics, SFT/GRPO histories and the rollout reward values (a few hundred KB in all); the
notebooks read them with paths relative to `nbs/` and re-plot them, so the figures are notebook outputs like any other.
"""
import shutil, sys
from pathlib import Path

FILES = ['resolved_config.yaml', 'report/report.md', 'report/results.md', 'report/comparisons.json', 'evaluate/metrics.json', 'sft/history.csv', 'sft/DONE.json',
         'sid/sid_report.json', 'rl/history.csv', 'rl/evals.csv', 'rl/comparison.json', 'rl/reward_values.csv.gz',
         'rl/reward_distributions.csv', 'rl/DONE.json', 'rl/grpo.yaml', 'rl/reward.yaml']
OPTIONAL = ['evaluate/metrics_valid.json', 'rl/summary.json', 'dpo/summary.json', 'dpo/comparison.json', 'dpo/history.csv', 'dpo/evals.csv',
            'dpo/DONE.json', 'evaluate/TIGER_history.csv', 'evaluate/HSTU_history.csv', 'evaluate/SASRec_history.csv', 'evaluate/DONE.json',
            'prepare/dataset_report.json']   # copied when the run has them (the dpo stage is optional)

def main(run:str, dest:str):
    run, dest = Path(run), Path(dest)
    files = [f if f != 'resolved_config.yaml' or (run/f).exists() else 'config.yaml' for f in FILES]   # older runs wrote config.yaml
    missing = [f for f in files if not (run/f).exists()]
    files += [f for f in OPTIONAL if (run/f).exists()]
    if missing: raise SystemExit(f'{run} lacks {missing}: run the whole pipeline first (minionerec pipeline --config ...)')
    tmp = dest.with_name(dest.name + '.tmp')
    if tmp.exists(): shutil.rmtree(tmp)
    for f in files:
        (tmp/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(run/f, tmp/f)
    if dest.exists(): shutil.rmtree(dest)
    tmp.rename(dest)
    print(f'copied {len(files)} files from {run} to {dest} ({sum((dest/f).stat().st_size for f in files) / 1e3:.0f} kB)')

if __name__ == '__main__':
    if len(sys.argv) != 3: raise SystemExit(__doc__)
    main(*sys.argv[1:])
