"""Measure RL levers on VALIDATION data (never the test split), each from the same SFT checkpoint at the same RL compute.

A run directory whose `sft` stage is done (e.g. `minionerec pipeline --config demo --run-dir runs/demo`) is reused:
every call loads its SFT checkpoint, runs one variant of the rl stage's training (`train_grpo` with the run's config plus
`--set` overrides), and appends one JSON line to `--out` with the kept step, the validation curve, the run's
`explain_run` numbers (informative groups, natural hit rate, KL, gradient norm), the wall time, and the SFT -> SFT+RL
difference of NDCG@10 on the FULL validation split with its paired-bootstrap interval. `--control` runs the control
instead of GRPO: continued SFT (cross-entropy on the same training rows, from the same checkpoint, at `--control_lr`
for `--control_steps` steps), which tells how much of a gain is plain further training rather than RL.
Chapter 12b ("RL levers") shows these lines from nbs/results/rl_levers/levers.jsonl.

    OMP_WAIT_POLICY=PASSIVE python bench/rl_levers.py runs/demo --config demo --tag shipped
    OMP_WAIT_POLICY=PASSIVE python bench/rl_levers.py runs/demo --config demo --tag collab --set rewards.collab=1 rl.lr=1e-3
    OMP_WAIT_POLICY=PASSIVE python bench/rl_levers.py runs/demo --config demo --tag ce --control --control_steps 150
"""
import argparse, json, os, time, tempfile
import numpy as np, torch

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('run', help='run directory whose sft stage is done')
    ap.add_argument('--config', default='demo', help='the preset or YAML file the run was made with')
    ap.add_argument('--tag', required=True, help='name of this variant')
    ap.add_argument('--set', nargs='*', default=[], help='config overrides of the variant, e.g. rl.lr=1e-3 rewards.collab=1')
    ap.add_argument('--control', action='store_true', help='continued SFT instead of GRPO (the control)')
    ap.add_argument('--control_steps', type=int, default=150); ap.add_argument('--control_lr', type=float, default=3e-4)
    ap.add_argument('--init', default=None, help='start from this checkpoint instead of the run\'s SFT checkpoint (e.g. a saved control); the difference is then measured against it')
    ap.add_argument('--save', default=None, help='copy the resulting model (checkpoint folder) here')
    ap.add_argument('--beams', type=int, default=20, help='beams of the final full-validation ranking')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--budget_s', type=float, default=None, help='equal compute: choose the steps so that training takes about this many '
                    'seconds (a short probe run measures the seconds per step; GRPO plans 15% more steps and stops at the budget)')
    ap.add_argument('--out', default='bench/results/rl_levers.jsonl', help='JSON lines file the result is appended to')
    return ap.parse_args(argv)

def full_valid(ctx, tok, models:dict, beams:int) -> dict:
    "Ranks of each model on every validation row, NDCG@10 and the paired bootstrap of the last against the first."
    from minionerec.decoding import SIDTrie
    from minionerec.evaluate import rank_prompts, rank_metrics, paired_bootstrap
    exs, trie = ctx.prompts(tok, 'valid'), SIDTrie.from_index(ctx.index(), tok)
    tg, ranks, ndcg = np.array([int(e['item_id']) for e in exs]), {}, {}
    for name, m in models.items():
        items, _ = rank_prompts(m.eval(), tok, [e['prompt'] for e in exs], trie, beams, 32)
        hit = items == tg[:, None]
        ranks[name] = np.where(hit.any(1), hit.argmax(1) + 1, 0); ndcg[name] = rank_metrics(items, tg, (10,))['NDCG@10']
    a, b = list(models)
    boot = paired_bootstrap(ranks[a], ranks[b], 'NDCG', 10, seed=0)
    return {'rows': len(exs), 'sft': round(ndcg[a], 4), 'after': round(ndcg[b], 4), 'delta': round(boot['delta'], 4),
            'lo': round(boot['lo'], 4), 'hi': round(boot['hi'], 4)}

def run_grpo(ctx, cfg, init):
    from minionerec.model import load_checkpoint, apply_training_mode
    from minionerec.grpo_trainer import train_grpo, explain_run
    from minionerec.pipeline import collab_scorer
    model, tok = load_checkpoint(init, dtype=cfg.model.dtype)
    model = apply_training_mode(model, cfg.model, tok.convert_tokens_to_ids(ctx.index().vocab()))
    scorer = collab_scorer(ctx)                     # trained (or read from the cache) before the clock starts
    t0 = time.perf_counter()
    res = train_grpo(cfg.rl, model, tok, ctx.index(), ctx.prompts(tok, 'train', cfg.rl.tasks), ctx.prompts(tok, 'valid'),
                     reward_cfg=cfg.rewards, scorer=scorer)
    out = {'wall': round(time.perf_counter() - t0, 1), 'best_step': res.best_step, 'steps': res.steps,
           'evals': res.evals[['step', 'NDCG@10']].round(4).values.tolist(), 'explain': explain_run(res.history, res.evals, res.best_step)}
    return res.model, tok, out

def run_control(ctx, cfg, steps:int, lr:float, init):
    from minionerec.model import load_checkpoint
    from minionerec.tasks import build_mixture
    from minionerec.sft import train_sft
    from minionerec.pipeline import ranking_score_fn
    model, tok = load_checkpoint(init, dtype=cfg.model.dtype)
    data, index = ctx.data(), ctx.index()
    train = build_mixture(data, index, 'train', cfg.tasks, seed=cfg.seed, tokenizer=tok)
    valid = build_mixture(data, index, 'valid', cfg.tasks, seed=cfg.seed, tokenizer=tok)[:cfg.max_valid_examples or None]
    scfg = cfg.sft.replace(lr=lr, max_steps=steps, patience=0, warmup_ratio=0.0, eval_every=max(1, steps // 10), save_every=0, resume=False)
    t0 = time.perf_counter()
    res = train_sft(scfg, model, tok, train, valid, out_dir=tempfile.mkdtemp(), score_fn=ranking_score_fn(ctx, tok), index=index)
    wall = time.perf_counter() - t0
    best, _ = load_checkpoint(res.best_checkpoint, dtype=cfg.model.dtype)
    return best, tok, {'wall': round(wall, 1), 'best_step': res.best_step, 'steps': res.steps, 'lr': lr}

def fit_steps(ctx, cfg, a, init) -> tuple:
    "Steps of GRPO (`cfg` with them) or of the control that fill `a.budget_s` seconds, from a probe run of a few steps."
    if a.control:                          # its 10 validations cost as much as many steps: wall = fixed + steps x per-step, from 2 probes
        w = [run_control(ctx, cfg, n, a.control_lr, init)[2]['wall'] for n in (20, 80)]
        per = max((w[1] - w[0]) / 60, 1e-3)
        return cfg, max(20, int((a.budget_s - (w[0] - 20 * per)) / per)), w[1]
    n = 5; _, _, p = run_grpo(ctx, cfg.replace(rl=cfg.rl.replace(max_steps=n, eval_every=n, max_minutes=None)), init)
    steps = max(n, int(1.15 * a.budget_s * (n + 1) / p['wall']) - 1)   # the step-0 validation costs about one step; 15% spare
    return cfg.replace(rl=cfg.rl.replace(max_steps=steps, max_minutes=a.budget_s / 60)), steps, p['wall']   # the budget stops it

def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from minionerec.presets import load_config
    from minionerec.pipeline import RunContext
    from minionerec.model import load_checkpoint
    cfg = load_config(a.config, [f'run_dir={a.run}'] + a.set)
    ctx = RunContext(cfg)
    init = a.init or ctx.sft_checkpoint()
    probe = {}
    if a.budget_s:
        cfg, steps, wall = fit_steps(ctx, cfg, a, init)
        if a.control: a.control_steps = steps
        probe = {'budget_s': a.budget_s, 'probe_wall': round(wall, 1), 'planned_steps': steps}
    model, tok, out = run_control(ctx, cfg, a.control_steps, a.control_lr, init) if a.control else run_grpo(ctx, cfg, init)
    out.update(probe)
    if a.save:
        from minionerec.model import save_checkpoint
        save_checkpoint(model, tok, a.save, index=ctx.index())
    sft, _ = load_checkpoint(init, dtype=cfg.model.dtype)
    out = {'tag': a.tag, 'kind': 'control: continued SFT' if a.control else 'grpo', 'set': a.set, 'init': str(a.init) if a.init else 'sft', **out,
           'valid': full_valid(ctx, tok, {'SFT': sft, 'after': model}, a.beams), 'run': str(a.run)}
    print(json.dumps(out))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, 'a') as f: f.write(json.dumps(out) + '\n')

if __name__ == '__main__': main()
