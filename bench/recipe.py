"""Rank SFT recipe levers on VALIDATION data (never the test split) on a prepared run directory.

A run directory that holds `prepare/`, `embed/` and `sid/` (e.g. `minionerec pipeline --config demo --set
'stages=[prepare,embed,sid]' --run-dir runs/demo`) is reused; each call trains one SFT variant of the generative
model and appends one JSON line to `--out` with validation NDCG@10 / HR@10 (constrained beam search), the number of
updates and the wall time. Chapter 10b ("The recipe: beating SASRec") shows these lines, each with a one-line
description of its lever, from nbs/results/recipe/levers.jsonl.

    OMP_WAIT_POLICY=PASSIVE python bench/recipe.py --run runs/demo --tag compact --prompt compact --epochs 16
    OMP_WAIT_POLICY=PASSIVE python bench/recipe.py --run runs/demo --tag mix --mix rec+title2sid+sid2title
"""
import argparse, json, os, time
from pathlib import Path
import numpy as np, torch

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', required=True, help='run directory holding prepare/, embed/ and sid/')
    ap.add_argument('--out', default='bench/results/recipe.jsonl', help='JSON lines file the result is appended to')
    ap.add_argument('--tag', required=True, help='name of this variant')
    ap.add_argument('--prompt', default='compact', choices=('scaffold', 'compact'), help='tasks.prompt_style')
    ap.add_argument('--dense', type=int, default=0, help='tasks.dense_rec (labels on history SIDs)')
    ap.add_argument('--mix', default='rec', help="'rec', 'full', or tasks joined by '+', each optionally ':weight' (rec+title2sid+sid2title:0.5)")
    ap.add_argument('--max_hist', type=int, default=10, help='tasks.max_history')
    ap.add_argument('--epochs', type=int, default=16)
    ap.add_argument('--lr', type=float, default=3e-3)
    ap.add_argument('--batch', type=int, default=32, help='global batch (one process)')
    ap.add_argument('--hidden', type=int, default=96); ap.add_argument('--layers', type=int, default=2)
    ap.add_argument('--heads', type=int, default=4); ap.add_argument('--inter', type=int, default=256)
    ap.add_argument('--sid_init', default='mean', help="model.sid_init: mean, random, title or embedding")
    ap.add_argument('--wd', type=float, default=0.0)
    ap.add_argument('--dropout', type=float, default=0.0, help='model.dropout: on the embeddings, each residual branch and the attention weights')
    ap.add_argument('--monitor', default='rec', help="sft.monitor: 'rec' (loss) or 'NDCG@10' (decodes --select_users rows at each validation)")
    ap.add_argument('--select_users', type=int, default=500)
    ap.add_argument('--patience', type=int, default=4)
    ap.add_argument('--max_valid', type=int, default=1000, help='validation examples of the loss')
    ap.add_argument('--eval_users', type=int, default=0, help='validation rows of the final NDCG (0 = all)')
    ap.add_argument('--beams', type=int, default=20)
    ap.add_argument('--max_length', type=int, default=160)
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--threads', type=int, default=1)
    return ap.parse_args(argv)

def task_mix(spec:str, **kw):
    from minionerec.tasks import TaskMixConfig, TASKS
    if spec == 'full': return TaskMixConfig(**kw)
    w = {t: 0.0 for t in TASKS if t != 'rec'}
    for part in spec.split('+'):
        t, _, v = part.partition(':')
        if t not in TASKS: raise SystemExit(f'--mix: unknown task {t!r}; tasks are {", ".join(TASKS)}')
        w[t] = float(v or 1.0)
    return TaskMixConfig(**w, **kw)

def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from minionerec.core import set_seed
    from minionerec.data import load_published
    from minionerec.sid import SIDIndex
    from minionerec.model import ModelConfig, load_backbone, add_sid_tokens, apply_training_mode, add_dropout
    from minionerec.tasks import build_mixture, task_examples
    from minionerec.sft import SFTConfig, train_sft
    from minionerec.decoding import SIDTrie
    from minionerec.evaluate import EvalConfig, evaluate_model, select_rows
    from minionerec.pipeline import catalogue_texts
    run = Path(a.run)
    data, index = load_published(run/'prepare'/'data'), SIDIndex.from_json(run/'sid'/'index.json')
    set_seed(a.seed)
    mcfg = ModelConfig(hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads, num_kv_heads=max(1, a.heads // 2),
                       intermediate_size=a.inter, vocab_size=2000 if data.n_items < 1000 else 3000, sid_init=a.sid_init,
                       **({'dropout': a.dropout} if a.dropout else {}))
    model, tok = load_backbone(mcfg, texts=catalogue_texts(data))
    kw = {'item_vectors': np.load(run/'embed'/'embeddings.npy')} if a.sid_init == 'embedding' else {}
    new = add_sid_tokens(tok, model, index, init=a.sid_init, texts=data.items['title'].tolist(), seed=0, **kw)
    model = apply_training_mode(model, mcfg, new)
    add_dropout(model, mcfg.dropout)
    mix = task_mix(a.mix, prompt_style=a.prompt, dense_rec=bool(a.dense), max_history=a.max_hist)
    train = build_mixture(data, index, 'train', mix, seed=a.seed)
    valid = task_examples('rec', data, index, 'valid', mix)
    vsub = [valid[i] for i in select_rows(len(valid), a.max_valid, 0)]
    score_fn = None
    if a.monitor != 'rec':
        sel, trie = [valid[i] for i in select_rows(len(valid), a.select_users, 1)], SIDTrie.from_index(index, tok)
        ecfg = EvalConfig(split='valid', num_beams=a.beams, batch_size=32, ks=(10,))
        score_fn = lambda m: {'NDCG@10': evaluate_model(m, tok, data, index, ecfg, trie=trie, examples=sel).metrics['NDCG@10']}
    per_epoch = -(-len(train) // a.batch)
    cfg = SFTConfig(lr=a.lr, warmup_ratio=0.05, epochs=a.epochs, patience=a.patience, monitor=a.monitor, global_batch_size=a.batch,
                    micro_batch_size=a.batch, max_length=a.max_length, eval_every=per_epoch, weight_decay=a.wd, seed=a.seed, resume=False)
    t0 = time.time()
    res = train_sft(cfg, model, tok, train, vsub, out_dir=Path(os.environ.get('TMPDIR', '/tmp'))/f'recipe_{a.tag}', score_fn=score_fn)
    t_sft = time.time() - t0
    model.eval(); t1 = time.time()
    r = evaluate_model(model, tok, data, index, EvalConfig(split='valid', num_beams=a.beams, batch_size=32, max_users=a.eval_users or None), examples=valid)
    rec = {'tag': a.tag, 'dataset': data.name, **{k: v for k, v in vars(a).items() if k not in ('run', 'out', 'tag')},
           'train_examples': len(train), 'updates': res.steps, 'best_step': res.best_step, 'sft_seconds': round(t_sft, 1),
           'eval_seconds': round(time.time() - t1, 1), 'valid_rows': len(r.targets),
           **{f'valid_{k}': round(float(v), 4) for k, v in r.metrics.items() if k in ('NDCG@5', 'NDCG@10', 'HR@10')}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, 'a') as f: f.write(json.dumps(rec) + '\n')
    print(json.dumps(rec))

if __name__ == '__main__': main()
