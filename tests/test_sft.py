"""SFT (07_sft): batch arithmetic, overfitting, resume equivalence, frozen mode, 2-process torchrun, real data."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from minionerec.core import ConfigError, read_json
from minionerec.model import ModelConfig, apply_training_mode
from minionerec.sft import (SFTConfig, SFTRunConfig, batch_plan, load_weights, run_sft, sft_loss, toy_backbone, toy_examples,
                            train_sft)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def toy():
    ex, index, titles = toy_examples(24)
    texts = [e['prompt'] for e in ex] + titles
    return ex, index, texts


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_batch_plan_is_exact_or_an_error():
    assert batch_plan(1024, 8, 8) == 16
    assert batch_plan(64, 16, 2) == 2
    with pytest.raises(ConfigError, match=r'global_batch_size=64 is not divisible by micro_batch_size=16 x world_size=3 = 48: '
                                          r'use global_batch_size 48 or 96'):
        batch_plan(64, 16, 3)
    with pytest.raises(ConfigError, match=r'or micro_batch_size in \[1, 2, 4, 8, 16, 32\]'):
        batch_plan(128, 24, 2)
    with pytest.raises(ConfigError, match='use global_batch_size 96 or 104'):
        SFTConfig(global_batch_size=100, micro_batch_size=8)


def test_loss_falls_when_overfitting(toy, tmp_path):
    ex, index, texts = toy
    model, tok, _ = toy_backbone(index, texts, seed=0)
    before = sft_loss(model, tok, ex)
    cfg = SFTConfig.tiny().replace(lr=1e-2, epochs=12, patience=0, global_batch_size=8, micro_batch_size=4)
    res = train_sft(cfg, model, tok, ex, ex, out_dir=tmp_path)
    after = sft_loss(model, tok, ex)
    assert after['all'] < 0.4 * before['all'], (before, after)
    for task in ('seqrec', 'sid2title'): assert after[task] < 0.5 * before[task], (task, before, after)
    tr = res.history.query("split == 'train' and task == 'all'")
    assert (tr.examples == 8).all() and len(tr) == res.steps == 36
    assert (tmp_path/'loss_curves.png').exists() and (tmp_path/'history.csv').exists()


def test_resume_after_kill_gives_the_same_weights(toy, tmp_path):
    "Kill after step 5 (last checkpoint at step 4), resume: same final weights and history as an uninterrupted run."
    ex, index, texts = toy
    cfg = SFTConfig.tiny().replace(epochs=3, global_batch_size=8, micro_batch_size=4, save_every=2, eval_every=3, patience=0)
    full, tok, _ = toy_backbone(index, texts, seed=1)
    r_full = train_sft(cfg, full, tok, ex, ex[:6], out_dir=tmp_path/'full')

    class Killed(Exception): pass
    def kill(state):
        if state['step'] == 5: raise Killed()
    part, tok, _ = toy_backbone(index, texts, seed=1)
    with pytest.raises(Killed): train_sft(cfg, part, tok, ex, ex[:6], out_dir=tmp_path/'part', on_step=kill)
    assert read_json(tmp_path/'part'/'last'/'sft_state.json')['step'] == 4
    again, tok, _ = toy_backbone(index, texts, seed=1)
    r_again = train_sft(cfg, again, tok, ex, ex[:6], out_dir=tmp_path/'part')

    assert r_again.steps == r_full.steps == 9
    np.testing.assert_allclose(r_again.history.loss.values, r_full.history.loss.values, rtol=0, atol=1e-6)
    for k, v in _weights(full).items(): torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=1e-6)
    # final (pre-restore) weights of the two runs, from their last checkpoints
    a, b = toy_backbone(index, texts, seed=5)[0], toy_backbone(index, texts, seed=6)[0]
    load_weights(a, tmp_path/'full'/'last'); load_weights(b, tmp_path/'part'/'last')
    for k, v in a.state_dict().items(): torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match='different config'):
        train_sft(cfg.replace(lr=1e-3), again, tok, ex, ex[:6], out_dir=tmp_path/'part')


def test_frozen_mode_changes_only_sid_rows(toy, tmp_path):
    ex, index, texts = toy
    model, tok, ids = toy_backbone(index, texts, seed=2)
    model = apply_training_mode(model, ModelConfig.tiny().replace(mode='frozen'), ids)
    before = _weights(model)
    cfg = SFTConfig.tiny().replace(epochs=2, weight_decay=0.1, global_batch_size=8, micro_batch_size=8, resume=False)
    res = train_sft(cfg, model, tok, ex, ex[:6], out_dir=tmp_path)
    assert res.steps == 6
    emb = next(k for k in before if k.endswith('embed_tokens.weight'))
    rows = (model.state_dict()[emb] != before[emb]).any(1).nonzero().flatten().tolist()
    used = {i for e in ex for i in tok(e['prompt'] + e['target'])['input_ids']}
    assert rows and set(rows) <= set(ids), rows
    assert set(rows) == set(ids) & used     # every SID row that occurs in the data moved
    for k, v in before.items():
        if k != emb and not k.endswith('lm_head.weight'): torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


def _synthetic_run_config(tmp_path, **sft):
    from minionerec.data import make_synthetic, SyntheticConfig
    from minionerec.sid import SIDIndex
    n = len(make_synthetic(SyntheticConfig.tiny()).items)
    flat = np.random.default_rng(0).choice(8 ** 3, n, replace=False)
    SIDIndex(np.stack([flat // 64, flat // 8 % 8, flat % 8], 1)).to_json(tmp_path/'index.json')
    cfg = SFTRunConfig.from_dict(dict(
        sid_index=str(tmp_path/'index.json'),
        model=dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, vocab_size=300),
        tasks=dict(max_per_task=16), output_dir=str(tmp_path/'out'),
        sft=dict(epochs=1, max_steps=3, global_batch_size=8, micro_batch_size=2, max_length=256, **sft)))
    cfg.to_yaml(tmp_path/'sft.yaml')
    return cfg


def test_two_processes_torchrun(tmp_path):
    "`torchrun --nproc_per_node 2 -m minionerec.sft`: disjoint shards, the configured global batch, same loss as 1 process."
    cfg = _synthetic_run_config(tmp_path)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'MINIONEREC_QUIET': '1'}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'minionerec.sft', '--config', str(tmp_path/'sft.yaml')],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = read_json(tmp_path/'out'/'sft_result.json')
    assert res['plan']['world_size'] == 2 and res['plan']['grad_accum'] == 2 and res['steps'] == 3
    a, b = res['first_step_shards']
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    import pandas as pd
    h = pd.read_csv(tmp_path/'out'/'history.csv')
    tr = h.query("split == 'train' and task == 'all'")
    assert (tr.examples == 8).all() and len(tr) == 3
    # one process, same config: the same global batches and the same token-mean loss
    one = run_sft(cfg.replace(output_dir=tmp_path/'one'))
    assert one.plan['world_size'] == 1 and one.plan['grad_accum'] == 4
    t1 = one.history.query("split == 'train' and task == 'all'")
    np.testing.assert_allclose(t1.loss.values, tr.loss.values, rtol=1e-4)
    v2, v1 = h.query("split == 'valid' and task == 'all'").loss.values, one.history.query("split == 'valid' and task == 'all'").loss.values
    np.testing.assert_allclose(v1, v2, rtol=1e-4)


def test_industrial_mixture_trains(amazon_root, tmp_path):
    "Real data: the full task mixture on Industrial tokenizes, trains a few steps of a tiny backbone, and the loss falls."
    cfg = SFTRunConfig.from_dict(dict(
        data=dict(source='published', root=str(amazon_root)),
        model=dict(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=1000),
        tasks=dict(max_per_task=48), output_dir=str(tmp_path),
        sft=dict(lr=3e-3, epochs=1, max_steps=12, warmup_ratio=0.0, global_batch_size=16, micro_batch_size=8, max_length=384)))
    res = run_sft(cfg)
    tr = res.history.query("split == 'train' and task == 'all'").loss.values
    assert res.steps == 12 and np.isfinite(tr).all()
    assert tr[-3:].mean() < tr[:3].mean(), tr
    tasks = set(res.history.task)
    assert {'rec', 'title2sid', 'sid2title', 'sid_hist2title', 'sid_hist2desc', 'title_hist2sid', 'preference'} <= tasks, tasks
