"""SFT (07_sft): batch arithmetic, overfitting, resume equivalence, trainer state without pickle, frozen mode, mixed
precision that learns, one optimizer update per global batch on 1 and 2 processes (torchrun), DeepSpeed ZeRO-2 on 2 CPU
processes, real data."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from minionerec.core import ConfigError, read_json
from minionerec.model import ModelConfig, apply_training_mode
from minionerec.sft import SFTConfig, sft_loss, toy_backbone, toy_examples, train_sft
from minionerec.model import load_weights
from minionerec.train import batch_plan
sys.path.insert(0, str(Path(__file__).parent))
from dist_runs import sft_run

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
    for task in ('rec', 'sid2title'): assert after[task] < 0.5 * before[task], (task, before, after)
    tr = res.history.query("split == 'train' and task == 'all'")
    assert (tr.examples == 8).all() and len(tr) == res.steps == res.updates == 36
    assert (tmp_path/'loss_curves.png').exists() and (tmp_path/'history.csv').exists()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'history.csv'), res.history, check_dtype=False)   # written as training went
    assert res.monitor == 'rec' and res.best_value == res.history.query("split == 'valid' and task == 'rec'").loss.min()


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


def test_crafted_trainer_state_does_not_run_code(toy, tmp_path):
    "Issue 14, bad case 1: a `last/` folder with pickles that would run code on load is refused, and nothing runs."
    ex, index, texts = toy
    cfg = SFTConfig.tiny().replace(epochs=1, global_batch_size=8, micro_batch_size=8, patience=0)
    model, tok, _ = toy_backbone(index, texts, seed=1)
    train_sft(cfg, model, tok, ex, ex[:6], out_dir=tmp_path/'run')
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (os.mkdir, (str(marker),))
    torch.save({'state': Evil(), 'param_groups': []}, tmp_path/'run'/'last'/'optimizer.pt')      # the optimizer file
    with pytest.raises(ConfigError, match='not a weights-only tensor file'):
        train_sft(cfg.replace(epochs=2), toy_backbone(index, texts, seed=1)[0], tok, ex, ex[:6], out_dir=tmp_path/'run')
    legacy = tmp_path/'old'/'last'; legacy.mkdir(parents=True)                                  # the old pickled format
    torch.save({'optimizer': Evil()}, legacy/'trainer_state.pt')
    with pytest.raises(ConfigError, match='never loaded'):
        train_sft(cfg, toy_backbone(index, texts, seed=1)[0], tok, ex, ex[:6], out_dir=tmp_path/'old')
    assert not marker.exists()


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


def test_paper_precision_trains_every_weight_at_lr_1e5(toy, tmp_path):
    """The paper preset's precision (bf16 backbone weights, `bf16=True`) at lr 1e-5: fp32 master weights with bf16 autocast,
    so every trained weight moves within 3 steps (AdamW on the bf16 weights themselves leaves most unchanged)."""
    from minionerec.presets import preset
    paper = preset('paper')
    ex, index, texts = toy
    model, tok, _ = toy_backbone(index, texts, seed=5, dtype=paper.model.dtype)
    assert next(model.parameters()).dtype == torch.bfloat16
    before = {k: v.detach().float().clone() for k, v in model.named_parameters()}
    cfg = SFTConfig.tiny().replace(lr=1e-5, warmup_ratio=0.0, epochs=1, max_steps=3, global_batch_size=8, micro_batch_size=4,
                                   bf16=paper.sft.bf16, resume=False)
    res = train_sft(cfg, model, tok, ex, out_dir=tmp_path)
    assert res.plan['mixed_precision'] == 'bf16' and res.plan['master_weights'] == 'float32' and res.updates == 3
    used = sorted({i for e in ex for i in tok(e['prompt'] + e['target'])['input_ids']} | {tok.eos_token_id})
    for k, p in model.named_parameters():
        assert p.dtype == torch.float32, k
        moved = p.detach() != before[k]
        if 'embed_tokens' in k: moved = moved[used]          # rows of tokens that never occur get no gradient
        assert moved.float().mean() > 0.95, (k, float(moved.float().mean()))


def test_one_update_per_global_batch_one_and_two_processes(tmp_path):
    """`torchrun --nproc_per_node 2`: disjoint shards, the configured global batch, one optimizer update per global batch
    (counted on the torch optimizer), the same losses as 1 process; `history.csv` is complete."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'MINIONEREC_QUIET': '1'}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(Path(__file__).parent/'dist_runs.py'), 'sft', str(tmp_path/'two')],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = read_json(tmp_path/'two'/'sft_result.json')
    assert res['plan']['world_size'] == 2 and res['plan']['grad_accum'] == 2 and res['steps'] == res['updates'] == 3
    a, b = res['first_step_shards']
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    h = pd.read_csv(tmp_path/'two'/'history.csv')
    tr = h.query("split == 'train' and task == 'all'")
    assert (tr.examples == 8).all() and len(tr) == 3
    one = sft_run(tmp_path/'one')                                   # the same run in this process
    assert one.plan['world_size'] == 1 and one.plan['grad_accum'] == 4 and one.steps == one.updates == 3
    np.testing.assert_allclose(one.history.query("split == 'train' and task == 'all'").loss.values, tr.loss.values, rtol=1e-4)
    v2, v1 = h.query("split == 'valid' and task == 'all'").loss.values, one.history.query("split == 'valid' and task == 'all'").loss.values
    np.testing.assert_allclose(v1, v2, rtol=1e-4)


def test_deepspeed_zero2_two_cpu_processes(tmp_path):
    """ZeRO-2 (configs/deepspeed_zero2.json, its `auto` fields filled from our plan) on 2 CPU processes: the engine steps
    the optimizer once per global batch (not once per micro-batch), the prepared scheduler follows our schedule, and the
    first loss equals the DDP run's (same weights, same batch)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'MINIONEREC_QUIET': '1'}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(Path(__file__).parent/'dist_runs.py'), 'sft', str(tmp_path/'ds'), json.dumps({'deepspeed_cpu': True, 'warmup_ratio': 0.5})],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-4000:]
    res = read_json(tmp_path/'ds'/'sft_result.json')
    assert res['plan']['engine'] == 'deepspeed' and res['plan']['grad_accum'] == 2
    assert res['steps'] == res['updates'] == 3
    h = pd.read_csv(tmp_path/'ds'/'history.csv')
    tr = h.query("split == 'train' and task == 'all'")
    ddp = sft_run(tmp_path/'ddp', warmup_ratio=0.5)
    t1 = ddp.history.query("split == 'train' and task == 'all'")
    np.testing.assert_allclose(tr.lr.values, t1.lr.values, rtol=1e-9)          # the schedule, stepped once per update
    np.testing.assert_allclose(tr.loss.values[0], t1.loss.values[0], rtol=1e-4)
    assert np.isfinite(tr.loss.values).all() and (tmp_path/'ds'/'best'/'config.json').exists()


def test_industrial_mixture_trains(amazon_root, tmp_path):
    "Real data: the full task mixture on Industrial tokenizes, trains a few steps of a tiny backbone, and the loss falls."
    from minionerec.data import load_published
    from minionerec.sid import SIDIndex
    from minionerec.model import load_backbone, add_sid_tokens
    from minionerec.tasks import TaskMixConfig, build_mixture
    data = load_published(amazon_root); index = SIDIndex.from_published(data)
    mcfg = ModelConfig(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=1000)
    model, tok = load_backbone(mcfg, [t for t in data.items.title.tolist() + data.items.description.tolist() if t])
    add_sid_tokens(tok, model, index)
    mix = TaskMixConfig(max_per_task=48)
    train, valid = build_mixture(data, index, 'train', mix, tokenizer=tok), build_mixture(data, index, 'valid', mix, tokenizer=tok)
    res = train_sft(SFTConfig(lr=3e-3, epochs=1, max_steps=12, warmup_ratio=0.0, global_batch_size=16, micro_batch_size=8, max_length=384),
                    model, tok, train, valid, out_dir=tmp_path)
    tr = res.history.query("split == 'train' and task == 'all'").loss.values
    assert res.steps == 12 and np.isfinite(tr).all()
    assert tr[-3:].mean() < tr[:3].mean(), tr
    tasks = set(res.history.task)
    assert {'rec', 'title2sid', 'sid2title', 'sid_hist2title', 'sid_hist2desc', 'title_hist2sid', 'preference'} <= tasks, tasks


def test_loss_lines_and_tensorboard(toy, tmp_path):
    "A log line per `log_every` steps (train loss, rec loss, lr) and per validation; the same numbers in TensorBoard event files."
    pytest.importorskip('tensorboard')
    import logging
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ex, index, texts = toy
    model, tok, _ = toy_backbone(index, texts, seed=3)
    cfg = SFTConfig.tiny().replace(epochs=1, global_batch_size=4, micro_batch_size=4, log_every=2, patience=0)
    class Keep(logging.Handler):
        def __init__(self): super().__init__(logging.INFO); self.lines = []
        def emit(self, r): self.lines.append(r.getMessage())
    h_, lg = Keep(), logging.getLogger('minionerec.sft')
    lg.addHandler(h_)
    try: res = train_sft(cfg, model, tok, ex, ex[:6], out_dir=tmp_path/'sft', index=index, report_to='tensorboard')
    finally: lg.removeHandler(h_)
    lines = [l for l in h_.lines if ' loss ' in l]
    assert [l.split()[1] for l in lines if ' train ' in l] == ['2/6', '4/6', '6/6'] and all(' rec ' in l and ' lr ' in l for l in lines if ' train ' in l)
    ea = EventAccumulator(str(tmp_path/'sft'/'tensorboard')); ea.Reload()
    assert [e.step for e in ea.Scalars('train/loss')] == [2, 4, 6]
    h = res.history.query("split == 'valid' and task == 'rec'")
    np.testing.assert_allclose([e.value for e in ea.Scalars('valid/loss_rec')], h.loss.values, rtol=1e-6)
    assert (tmp_path/'sft'/'best'/'index.json').exists() and (tmp_path/'sft'/'last'/'index.json').exists()
    with pytest.raises(ConfigError, match="report_to must be one of"):
        train_sft(cfg, model, tok, ex, ex[:6], out_dir=tmp_path/'x', report_to='tensorbord')


def test_tracking_settings_come_from_the_config(toy, tmp_path, monkeypatch):
    """Tracker project / entity / run group / tags are config keys (`PipelineConfig.tracking`, a `train.TrackingConfig`)
    that `train_sft` / `train_grpo` hand to accelerate's `init_trackers`; checked without network: the arguments each
    tracker gets, and the settings reaching the tracker start of a TensorBoard run."""
    import minionerec.train as T
    from minionerec.presets import load_config
    pc = load_config('tiny', ['tracking.project=recs', 'tracking.entity=team', 'tracking.group=sweep', 'tracking.tags=[industrial, qwen]'])
    assert pc.tracking == T.TrackingConfig(project='recs', entity='team', group='sweep', tags=['industrial', 'qwen'])
    assert T.tracker_init('wandb', tmp_path/'run'/'sft', pc.tracking) == ('recs', {'wandb': {
        'dir': str(tmp_path/'run'/'sft'), 'name': 'run/sft', 'entity': 'team', 'group': 'sweep', 'tags': ['industrial', 'qwen']}})
    assert T.tracker_init('mlflow', tmp_path/'run'/'rl', pc.tracking)[1]['mlflow']['tags'] == {'group': 'sweep', 'industrial': 'true', 'qwen': 'true'}
    seen, orig = [], T.tracker_init
    monkeypatch.setattr(T, 'tracker_init', lambda r, o, t=None: seen.append((r, Path(o).name, t)) or orig(r, o, t))
    ex, index, texts = toy
    model, tok, _ = toy_backbone(index, texts, seed=3)
    cfg = SFTConfig.tiny().replace(epochs=1, global_batch_size=8, micro_batch_size=8, patience=0)
    train_sft(cfg, model, tok, ex, ex[:6], out_dir=tmp_path/'sft', report_to='tensorboard', tracking=pc.tracking)
    assert seen == [('tensorboard', 'sft', pc.tracking)] and (tmp_path/'sft'/'tensorboard').is_dir()
