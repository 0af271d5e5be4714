"""The paper's ablation grid in miniature: {from scratch, language prior} x {rec task only, + alignment} x {SFT, SFT+RL}.

A run directory whose `prepare`, `embed` and `sid` stages are done (`minionerec pipeline --config X --set
'stages=[prepare,embed,sid]' --run-dir RUN`) is reused with the config it was made with. Cells:

  scratch/rec/sft     the config's model (the from-scratch Qwen2) on the rec task alone      (the reference cell)
  scratch/align/sft   the same + the alignment tasks (`--align`), `--align_holdout` of the items held out and probed
  prior/rec/sft       `ModelConfig(backbone='minilm', prior_layers=--prior_layers)`: the MiniLM decoder (chapter 9a)
  prior/align/sft
  <each>/sft+rl       the rl stage's GRPO (the config's `rl` and `rewards`) from that SFT cell's checkpoint
  catalogue/...       with `--pretrain_steps N`: the scratch Qwen2 first pretrained N steps on the catalogue's text
                      (`ModelConfig.pretrain_steps`; its seconds are reported as `backbone_s`, outside the SFT budget)

Compute: every SFT cell trains for the same wall-clock budget `--sft_budget_s` (turned into a step count per cell by
timing `--calib_steps` training steps first, so the LR schedule spans the budget; validation passes are not counted)
or for the same `--sft_steps`; every RL cell for the same `--rl_budget_s` (GRPO's `max_minutes`) or `--rl_steps`;
`--train_rows N` gives every cell the same seeded N training rows. Each cell appends one JSON line per split to `--out`
(default nbs/results/ablation/<dataset>.jsonl): NDCG@10 / HR@10 over every row of the split (beam `--beams`), the
user-clustered paired bootstrap interval of the difference against scratch/rec/sft on the same rows, the alignment
probe at the kept SFT step, wall times and the budget. Validation always; `--test` also ranks test (once, for the
cells chosen on validation). Checkpoints and per-row ranks stay under `<run>/ablation/<cell>/`; an SFT cell already
trained there with the same settings is reused (so RL cells can follow later).

    python bench/ablation.py runs/tiny --config tiny --sft_steps 4 --rl_steps 1 --out /tmp/ablation_tiny.jsonl
    MINIONEREC_DATA=/work/shared/data python bench/ablation.py runs/industrial --config configs/industrial.yaml \\
        --sft_budget_s 1200 --rl_budget_s 600 --prior_layers 2
"""
import argparse, copy, dataclasses, json, math, os, shutil, time
from pathlib import Path
import numpy as np, torch

BACKBONES, TASK_SETS, STAGES = ('scratch', 'prior', 'catalogue'), ('rec', 'align'), ('sft', 'sft+rl')
ALL_CELLS = [f'{b}/{t}/{s}' for b in BACKBONES for t in TASK_SETS for s in STAGES]
REF = 'scratch/rec/sft'


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('run', help='run directory whose prepare, embed and sid stages are done')
    ap.add_argument('--config', default='demo', help='the preset or YAML file the run was made with')
    ap.add_argument('--set', nargs='*', default=[], help='config overrides for every cell, e.g. sft.lr=1e-3 tasks.prompt_style=scaffold')
    ap.add_argument('--cells', default='all', help=f"comma-separated cells (default all 8: {', '.join(ALL_CELLS)})")
    ap.add_argument('--sft_budget_s', type=float, default=0, help='SFT wall-clock budget per cell (training steps only)')
    ap.add_argument('--sft_steps', type=int, default=0, help='SFT step budget per cell instead of --sft_budget_s')
    ap.add_argument('--calib_steps', type=int, default=3, help='training steps timed to turn --sft_budget_s into steps')
    ap.add_argument('--rl_budget_s', type=float, default=0, help='GRPO wall-clock budget per SFT+RL cell')
    ap.add_argument('--rl_steps', type=int, default=0, help='GRPO step cap per SFT+RL cell (0 = the config\'s max_steps)')
    ap.add_argument('--train_rows', type=int, default=0, help='train every cell on the same seeded subset of this many training rows (0 = all)')
    ap.add_argument('--prior_layers', type=int, default=1, help='MiniLM layers kept by the language-prior cells (1..6)')
    ap.add_argument('--prior_vocab', default='catalogue', choices=('catalogue', 'full'))
    ap.add_argument('--pretrain_steps', type=int, default=0, help="adds the 'catalogue' cells: the scratch model pretrained this many steps on the catalogue text")
    ap.add_argument('--align', default='title2sid+sid2title', help="alignment tasks of the 'align' cells, joined by '+' (chapter 5's names)")
    ap.add_argument('--align_holdout', type=float, default=0.05, help='share of items kept out of the alignment examples and probed')
    ap.add_argument('--beams', type=int, default=20, help='beams of the final rankings')
    ap.add_argument('--test', action='store_true', help='also rank the test split (once, for the cells chosen on validation)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', default=None, help='JSON lines file (default nbs/results/ablation/<dataset>.jsonl)')
    ap.add_argument('--work', default=None, help='checkpoints and ranks of the cells (default <run>/ablation)')
    a = ap.parse_args(argv)
    default = [c for c in ALL_CELLS if a.pretrain_steps or not c.startswith('catalogue/')]
    cells = default if a.cells == 'all' else [c.strip() for c in a.cells.split(',') if c.strip()]
    bad = [c for c in cells if c not in ALL_CELLS]
    if bad: ap.error(f'unknown cell {bad[0]!r}; cells are {", ".join(ALL_CELLS)}')
    if bool(a.sft_budget_s) == bool(a.sft_steps): ap.error('give exactly one SFT budget: --sft_budget_s or --sft_steps')
    if any(c.startswith('catalogue/') for c in cells) and not a.pretrain_steps: ap.error('catalogue cells need --pretrain_steps > 0')
    if not 1 <= a.prior_layers <= 6: ap.error(f'--prior_layers must be 1..6 (the MiniLM has 6 layers), got {a.prior_layers}')
    a.cells = cells
    return a


def cell_config(cfg, a, backbone:str, tasks:str):
    "The pipeline config of one SFT cell: the run's, with the cell's backbone and task mixture."
    from minionerec.presets import REC_ONLY
    from minionerec.tasks import TASKS
    m = {'scratch': cfg.model, 'catalogue': cfg.model.replace(pretrain_steps=a.pretrain_steps),
         'prior': cfg.model.replace(backbone='minilm', prior_layers=a.prior_layers, prior_vocab=a.prior_vocab)}[backbone]
    if tasks == 'rec': t = cfg.tasks.replace(**REC_ONLY, desc2sid=0.0, align_holdout=0.0)
    else:
        names = [x for x in a.align.split('+') if x]
        unknown = [x for x in names if x not in TASKS or x == 'rec']
        if unknown: raise SystemExit(f'--align: {unknown[0]!r} is not an alignment task; tasks are {", ".join(t for t in TASKS if t != "rec")}')
        t = cfg.tasks.replace(**{k: (1.0 if k in names else 0.0) for k in REC_ONLY}, desc2sid=1.0 if 'desc2sid' in names else 0.0,
                              align_holdout=a.align_holdout)
    return cfg.replace(model=m, tasks=t)


def subset_rows(data, n:int, seed:int):
    "`data` with a seeded subset of `n` training rows (the same rows for every cell); validation and test untouched."
    if not n or n >= len(data.splits['train']): return data
    keep = np.sort(np.random.default_rng([seed, 7]).choice(len(data.splits['train']), n, replace=False))
    return dataclasses.replace(data, splits={**data.splits, 'train': data.splits['train'].iloc[keep].reset_index(drop=True)})


def step_seconds(model, tok, train:list, scfg, n:int) -> float:
    "Median seconds of one SFT optimizer step (global batch of `scfg`, its micro-batches) on a copy of `model`, after one warm-up step."
    from minionerec.encode import tokenize_examples
    from minionerec.sft import collate, token_losses
    from minionerec.model import pad_id
    m = copy.deepcopy(model).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-6)
    rng, ts = np.random.default_rng(0), []
    for r in range(n + 1):
        idx = rng.choice(len(train), min(scfg.global_batch_size, len(train)), replace=False)
        feats = tokenize_examples([train[i] for i in idx], tok, scfg.max_length)
        t0 = time.perf_counter()
        for s in range(0, len(feats), scfg.micro_batch_size):
            l, mk = token_losses(m, collate(feats[s:s + scfg.micro_batch_size], pad_id(tok)))
            (l.sum() / max(int(mk.sum()), 1)).backward()
        opt.step(); opt.zero_grad()
        if r: ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def sft_cell(ctx, a, name:str, work:Path, log) -> dict:
    "Train (or reuse) one SFT cell; returns its record (checkpoint, steps, wall times, probe) and leaves it in `work/name`."
    from minionerec.core import set_seed, read_json, write_json
    from minionerec.model import load_backbone, add_sid_tokens, apply_training_mode, add_dropout
    from minionerec.tasks import build_mixture, holdout_items
    from minionerec.sft import train_sft
    from minionerec.probe import alignment_probe, combine_scores, probe_summary
    from minionerec.pipeline import catalogue_texts, ranking_score_fn
    cfg, data, index = ctx.cfg, ctx.data(), ctx.index()
    settings = {'model': cfg.model.to_dict(), 'tasks': cfg.tasks.to_dict(), 'sft': cfg.sft.to_dict(), 'seed': cfg.seed, 'train_rows': a.train_rows,
                'sft_budget_s': a.sft_budget_s, 'sft_steps': a.sft_steps}
    settings = json.loads(json.dumps(settings, default=str))
    rec_file = work/name/'sft.json'
    if rec_file.exists() and read_json(rec_file).get('settings') == settings:
        log(f'{name}: reusing the SFT cell in {work/name}'); return read_json(rec_file)
    shutil.rmtree(work/name, ignore_errors=True)
    set_seed(cfg.seed)
    tb = time.perf_counter()
    model, tok = load_backbone(cfg.model, texts=catalogue_texts(data))     # (+ the catalogue cells' pretraining)
    backbone_s = time.perf_counter() - tb
    vectors = ctx.embeddings() if cfg.model.sid_init == 'embedding' else None
    new = add_sid_tokens(tok, model, index, init=cfg.model.sid_init, seed=cfg.model.seed, texts=data.items['title'].tolist(), item_vectors=vectors)
    model = apply_training_mode(model, cfg.model, new)
    add_dropout(model, cfg.model.dropout)
    train = build_mixture(data, index, 'train', cfg.tasks, seed=cfg.seed, tokenizer=tok)
    valid = build_mixture(data, index, 'valid', cfg.tasks, seed=cfg.seed, tokenizer=tok)
    if cfg.max_valid_examples is not None and len(valid) > cfg.max_valid_examples:
        valid = [valid[i] for i in np.sort(np.random.default_rng(cfg.seed).choice(len(valid), cfg.max_valid_examples, replace=False))]
    per_step = step_seconds(model, tok, train, cfg.sft, a.calib_steps) if a.sft_budget_s else None
    steps = a.sft_steps or max(1, int(a.sft_budget_s / per_step))
    spe = math.ceil(len(train) / cfg.sft.global_batch_size)
    scfg = cfg.sft.replace(max_steps=steps, epochs=math.ceil(steps / spe), eval_every=max(1, min(cfg.sft.eval_every or spe, steps)),
                           save_every=0, resume=False)
    held = holdout_items(len(data.items), cfg.tasks.align_holdout, cfg.tasks.holdout_seed)
    probe = alignment_probe(data, index, tok, held, cfg.tasks, cfg.sft.max_length) if len(held) else None
    log(f'{name}: {len(train)} training examples, {steps} steps' + (f' ({per_step:.2f} s/step timed)' if per_step else ''))
    t0 = time.perf_counter()
    res = train_sft(scfg, model, tok, train, valid, out_dir=work/name/'sft', score_fn=combine_scores(ranking_score_fn(ctx, tok), probe), index=index)
    rec = {'checkpoint': str(res.best_checkpoint or res.last_checkpoint), 'sft_steps': res.steps, 'best_step': res.best_step,
           'sft_wall_s': round(time.perf_counter() - t0, 1), 'backbone_s': round(backbone_s, 1), 'sft_step_s': None if per_step is None else round(per_step, 4),
           'train_examples': len(train), 'n_params': sum(p.numel() for p in model.parameters()),
           'probe': probe_summary(res.scores, res.best_step), 'settings': settings}
    write_json(rec_file, rec)
    return rec


def rl_cell(ctx, a, name:str, sft_ckpt:str, work:Path, log):
    "GRPO (the run's rl config) from an SFT cell's checkpoint; returns (kept model, tokenizer, record)."
    from minionerec.model import load_checkpoint, apply_training_mode
    from minionerec.grpo_trainer import train_grpo
    from minionerec.pipeline import collab_scorer
    cfg, index = ctx.cfg, ctx.index()
    model, tok = load_checkpoint(sft_ckpt, dtype=cfg.model.dtype)
    model = apply_training_mode(model, cfg.model, tok.convert_tokens_to_ids(index.vocab()))
    rcfg = cfg.rl.replace(max_minutes=(a.rl_budget_s / 60) if a.rl_budget_s else cfg.rl.max_minutes,
                          max_steps=a.rl_steps or cfg.rl.max_steps, save_every=0, resume=False)
    scorer = collab_scorer(ctx)                                   # trained (or read from the cache) before the clock starts
    shutil.rmtree(work/name, ignore_errors=True)
    t0 = time.perf_counter()
    res = train_grpo(rcfg, model, tok, index, ctx.prompts(tok, 'train', rcfg.tasks), ctx.prompts(tok, 'valid'), out_dir=work/name/'rl',
                     reward_cfg=cfg.rewards, scorer=scorer)
    log(f'{name}: GRPO {res.steps} steps, kept step {res.best_step}')
    return res.model, tok, {'rl_steps': res.steps, 'rl_best_step': res.best_step, 'rl_wall_s': round(time.perf_counter() - t0, 1)}


def rank_split(ctx, model, tok, split:str, beams:int) -> np.ndarray:
    "1-based rank of the target in the constrained beam list of every row of `split` (0 = not listed)."
    from minionerec.decoding import SIDTrie
    from minionerec.evaluate import rank_prompts
    exs = ctx.prompts(tok, split)
    if len(exs) != len(ctx.data().splits[split]): raise RuntimeError(f'{len(exs)} prompts for {len(ctx.data().splits[split])} {split} rows')
    items, _ = rank_prompts(model.eval(), tok, [e['prompt'] for e in exs], SIDTrie.from_index(ctx.index(), tok), beams, 32)
    hit = items == np.array([int(e['item_id']) for e in exs])[:, None]
    return np.where(hit.any(1), hit.argmax(1) + 1, 0)


def gain_difference(prior_sft, prior_rl, scratch_sft, scratch_rl, users, n_boot:int=2000, seed:int=0) -> dict:
    "RL's NDCG@10 gain on the prior minus its gain on scratch (same rows), with a user-clustered bootstrap 95% interval."
    from minionerec.evaluate import row_metric
    nd = lambda r: row_metric(r, 'NDCG', 10)
    d = (nd(prior_rl) - nd(prior_sft)) - (nd(scratch_rl) - nd(scratch_sft))   # (rows,)
    _, u = np.unique(np.asarray(users), return_inverse=True)
    S, n = np.bincount(u, weights=d), np.bincount(u).astype(float)                             # per user: sum, rows
    rng, U = np.random.default_rng(seed), len(n)
    boot = [(lambda w: (w @ S) / (w @ n))(np.bincount(rng.integers(0, U, U), minlength=U)) for _ in range(n_boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {'NDCG@10_delta': round(float(d.mean()), 4), 'NDCG@10_lo': round(float(lo), 4), 'NDCG@10_hi': round(float(hi), 4)}


def metrics(ranks:np.ndarray, ref:np.ndarray|None, users) -> dict:
    "NDCG@10 and HR@10 of `ranks`, with the user-clustered paired bootstrap of the difference against `ref` (same rows)."
    from minionerec.evaluate import paired_bootstrap, row_metric
    out = {'rows': int(len(ranks)), 'NDCG@10': round(float(row_metric(ranks, 'NDCG', 10).mean()), 4), 'HR@10': round(float(row_metric(ranks, 'HR', 10).mean()), 4)}
    if ref is not None:
        for metric, key in (('NDCG', 'NDCG@10'), ('HR', 'HR@10')):
            b = paired_bootstrap(ref, ranks, metric, 10, groups=users, seed=0)
            out.update({f'{key}_delta': round(b['delta'], 4), f'{key}_lo': round(b['lo'], 4), f'{key}_hi': round(b['hi'], 4)})
    return out


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from minionerec.core import get_logger, write_json
    from minionerec.presets import load_config
    from minionerec.pipeline import RunContext
    from minionerec.model import load_checkpoint
    from minionerec.evaluate import provenance
    log = get_logger('minionerec.ablation').info
    import transformers; transformers.utils.logging.disable_progress_bar()
    base = load_config(a.config, [f'run_dir={a.run}'] + a.set)
    ctx0 = RunContext(base)
    for stage in ('prepare', 'embed', 'sid'):
        if not ctx0.path(stage, 'DONE.json').exists(): raise SystemExit(f'{a.run}: the {stage} stage is not done (run the pipeline with stages=[prepare,embed,sid] first)')
    data = subset_rows(ctx0.data(), a.train_rows, base.seed)
    work = Path(a.work or Path(a.run)/'ablation')
    out = Path(a.out or Path('nbs/results/ablation')/f'{data.name}.jsonl')
    splits = ['valid'] + (['test'] if a.test else [])
    budget = {'sft_budget_s': a.sft_budget_s or None, 'sft_steps': a.sft_steps or None, 'rl_budget_s': a.rl_budget_s or None,
              'rl_steps': a.rl_steps or None, 'train_rows': len(data.splits['train']), 'global_batch': base.sft.global_batch_size}
    common = {'dataset': data.name, 'config': str(a.config), 'set': a.set, 'prior_layers': a.prior_layers, 'prior_vocab': a.prior_vocab,
              'pretrain_steps': a.pretrain_steps or None,
              'align': a.align, 'align_holdout': a.align_holdout, 'prompt_style': base.tasks.prompt_style, 'beams': a.beams,
              'budget': budget, 'commit': provenance().get('commit')}
    order = sorted(set(a.cells) | {REF}, key=ALL_CELLS.index)      # the reference first: every interval is against it
    ref_ranks, sft_recs = {}, {}
    for cell in order:
        backbone, tasks, stage = cell.split('/')
        ctx = RunContext(cell_config(base, a, backbone, tasks), a.run)
        ctx._cache.update(data=data, index=ctx0.index())
        key = f'{backbone}-{tasks}'
        if key not in sft_recs: sft_recs[key] = sft_cell(ctx, a, f'{key}-sft', work, log)
        rec = dict(sft_recs[key]); rec.pop('settings', None)
        if stage == 'sft':
            model, tok = load_checkpoint(rec['checkpoint'], dtype=ctx.cfg.model.dtype)
            rec['rl_wall_s'] = 0.0
        else:
            model, tok, r = rl_cell(ctx, a, f'{key}-rl', rec['checkpoint'], work, log); rec.update(r)
        for split in splits:
            users = ctx.data().splits[split]['user_id'].to_numpy()
            ranks = rank_split(ctx, model, tok, split, a.beams)
            np.save(work/f'{key}-{stage.replace("+", "")}_ranks_{split}.npy', ranks)
            if cell == REF: ref_ranks[split] = ranks
            line = {**common, 'cell': cell, 'backbone': backbone, 'tasks': tasks, 'stage': stage, 'split': split, 'ref': REF,
                    **metrics(ranks, ref_ranks.get(split), users), **rec, 'wall_s': round(rec['sft_wall_s'] + rec['rl_wall_s'] + rec.get('backbone_s', 0), 1)}
            print(json.dumps(line), flush=True)
            if cell in a.cells: append_line(out, line)
        del model
    rl_gain_lines(a, work, splits, common, ctx0.data(), out)


def append_line(out:Path, line:dict):
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'a') as f: f.write(json.dumps(line) + '\n')


def rl_gain_lines(a, work:Path, splits, common:dict, data, out:Path):
    "For each backbone and task set whose SFT / SFT+RL cells and scratch's were run now: RL's gain on it minus its gain on scratch (the paper's claim)."
    for other in ('prior', 'catalogue'):
        for tasks in TASK_SETS:
            pair = ('scratch', other)
            if not all(f'{b}/{tasks}/{s}' in a.cells for b in pair for s in STAGES): continue
            for split in splits:
                r = {f'{b}-{s}': np.load(work/f'{b}-{tasks}-{s.replace("+", "")}_ranks_{split}.npy') for b in pair for s in STAGES}
                g = gain_difference(r[f'{other}-sft'], r[f'{other}-sft+rl'], r['scratch-sft'], r['scratch-sft+rl'], data.splits[split]['user_id'].to_numpy())
                line = {**common, 'cell': f'rl gain, {other} - scratch ({tasks})', 'backbone': None, 'tasks': tasks,
                        'stage': 'rl gain difference', 'split': split, **g}
                print(json.dumps(line), flush=True); append_line(out, line)


if __name__ == '__main__': main()
