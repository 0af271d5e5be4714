"""RL (11_rewards, 12_grpo): our GRPO loss agrees with TRL's on a fixed batch, the config is strict, and the same
trainer runs under `torchrun --nproc_per_node 2` (gloo, CPU): prompts sharded, rewards gathered, same steps as one
process, one optimizer update per step, no hang, clean exit; and under DeepSpeed ZeRO-2 on 2 CPU processes."""
import os, sys, json, subprocess, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from minionerec.core import ConfigError
from minionerec.grpo import GRPOConfig, grpo_loss
from minionerec.rewards import RewardConfig
sys.path.insert(0, str(Path(__file__).parent))
from dist_runs import grpo_world, grpo_run

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)

def _free_port() -> int:
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _tiny_lm():
    from minionerec.model import train_bpe_tokenizer, build_tiny_model, ModelConfig
    tok = train_bpe_tokenizer(['a b c d e f g h'] * 5, vocab_size=300)
    return build_tiny_model(ModelConfig.tiny(), tok), tok

@pytest.mark.parametrize('ours,theirs', [('sequence-mean', 'grpo'), ('token-mean', 'bnpo'), ('dr_grpo', 'dr_grpo')])
def test_grpo_loss_matches_trl(ours, theirs, tmp_path):
    "TRL's GRPOTrainer._compute_loss and our grpo_loss give the same loss and gradient on one fixed batch (clipping active)."
    os.environ['TRL_EXPERIMENTAL_SILENCE'] = '1'
    from datasets import Dataset
    from trl import GRPOTrainer, GRPOConfig as TRLConfig
    from minionerec.grpo import completion_logprobs
    model, tok = _tiny_lm()
    T, beta = 4, 0.05
    # TRL builds its reference model from a hub path when beta > 0; we give it reference log-probs directly instead
    args = TRLConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, beta=0.0, loss_type=theirs,
                     use_cpu=True, report_to=[], max_completion_length=T, save_strategy='no', epsilon=0.2, bf16=False,
                     use_bias_correction_kl=False)   # TRL 1.16 multiplies the k3 term by the policy ratio by default; GRPO's objective does not
    tr = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                     train_dataset=Dataset.from_dict({'prompt': ['a b', 'c d']}), processing_class=tok)
    tr.beta, tr.current_gradient_accumulation_steps = beta, 1
    g = torch.Generator().manual_seed(0)
    N, P = 8, 3
    cmask = torch.ones(N, T, dtype=torch.long); cmask[1, 3] = 0; cmask[2, 2:] = 0
    inputs = {'prompt_ids': torch.randint(3, 200, (N, P), generator=g), 'prompt_mask': torch.ones(N, P, dtype=torch.long),
              'completion_ids': torch.randint(3, 200, (N, T), generator=g), 'completion_mask': cmask,
              'advantages': torch.randn(N, generator=g)}
    with torch.no_grad():
        lp0 = completion_logprobs(model, inputs['prompt_ids'], inputs['prompt_mask'], inputs['completion_ids'], cmask)
    inputs['old_per_token_logps'] = lp0 + 0.3 * torch.randn(N, T, generator=g)       # stale policy: ratios leave [0.8, 1.2]
    inputs['ref_per_token_logps'] = lp0 + 0.1 * torch.randn(N, T, generator=g)
    model.train()
    theirs_loss = tr._compute_loss(tr.model, inputs)
    g_theirs = torch.autograd.grad(theirs_loss, model.model.embed_tokens.weight)[0]
    cfg = GRPOConfig(beta=beta, clip_eps=0.2, loss_agg=ours)
    lp = completion_logprobs(model, inputs['prompt_ids'], inputs['prompt_mask'], inputs['completion_ids'], cmask)
    our_loss, st = grpo_loss(lp, inputs['old_per_token_logps'], inputs['ref_per_token_logps'], inputs['advantages'], cmask, cfg, max_len=T)
    g_ours = torch.autograd.grad(our_loss, model.model.embed_tokens.weight)[0]
    assert st['clip_frac'] > 0
    torch.testing.assert_close(our_loss, theirs_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-7)

def test_config_is_strict():
    c = GRPOConfig.tiny()
    assert GRPOConfig.from_yaml(c.to_yaml()) == c
    with pytest.raises(ConfigError, match="did you mean 'num_generations'"): GRPOConfig.from_dict({'num_generation': 4})
    with pytest.raises(ConfigError, match='multiple of micro_batch'): GRPOConfig(prompts_per_step=6, micro_batch=4)
    assert GRPOConfig.paper().bf16 and not GRPOConfig.paper().deterministic and GRPOConfig.tiny().deterministic

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Synthetic data in the published layout, a collision-free SID index and an (untrained) tiny checkpoint."
    return grpo_world(tmp_path_factory.mktemp('rl'))

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'MINIONEREC_QUIET': '1', 'TOKENIZERS_PARALLELISM': 'false'}

def _torchrun(root, out, timeout=300, **kw):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(_free_port()),
                           str(Path(__file__).parent/'dist_runs.py'), 'grpo', str(out), json.dumps({'root': str(root), **kw})],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)

def test_two_processes_match_one(world):
    """torchrun with 2 CPU processes (gloo): each rolls out its half of the prompts, rewards are gathered, the steps'
    statistics equal a 1-process run's (same global batch, globally normalized loss), and both exit cleanly."""
    root = world
    t0 = time.perf_counter()
    p = _torchrun(root, root/'two', timeout=240)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count('grpo done') == 1                                  # printed by the main process only
    two = json.loads((root / 'two' / 'summary.json').read_text())
    assert two['processes'] == 2 and two['steps'] == two['updates'] == 2     # one optimizer update per step
    h2 = pd.read_csv(root / 'two' / 'history.csv')
    assert h2.groups.tolist() == [4, 4] and h2.updates.tolist() == [1, 2]    # both halves of every step's groups gathered
    one = grpo_run(root, root/'one')                                          # the same run in this process
    h1 = one.history
    assert h1.adv_abs.iloc[0] > 0.5 and h1.reward_rank.iloc[0] < 0      # the rollouts carry a learning signal
    for k in ('reward_rule', 'reward_rank', 'reward_total', 'hit_frac', 'group_ndcg', 'adv_abs', 'loss', 'kl', 'ratio', 'updates'):
        np.testing.assert_allclose(h1[k].values, h2[k].values, rtol=1e-3, atol=1e-7, err_msg=k)   # both steps
    assert h2.kl.iloc[1] > 0                                             # step 2 measures the step-1 update: same on 1 and 2 processes
    from minionerec.model import load_checkpoint
    m2, _ = load_checkpoint(root / 'two' / 'checkpoint')
    for (k, a), b in zip(one.model.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=k)     # the same weights after two updates
    e2 = pd.read_csv(root / 'two' / 'evals.csv')
    assert np.isclose(one.evals['NDCG@10'].iloc[0], e2['NDCG@10'].iloc[0])  # sharded validation == unsharded, before training
    assert (root / 'two' / 'checkpoint' / 'config.json').exists()
    assert seconds < 150, f'2-process run took {seconds:.0f}s'

def test_two_processes_filter_groups_match_one(world):
    """`filter_groups`: groups without a learning signal leave the loss and are never forwarded, so the processes hold
    different numbers of live rows; each still runs the plan's micro-batches (no hang) and the run equals 1 process."""
    root = world
    kw = dict(filter_groups=True, num_generations=16, prompts_per_step=8, micro_batch=2, max_steps=3, eval_max_users=4, reward={'miss': 'zero'})
    p = _torchrun(root, root/'two_f', **kw)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    h2 = pd.read_csv(root / 'two_f' / 'history.csv')
    one = grpo_run(root, root/'one_f', **kw)
    h1 = one.history
    assert ((h1.trained_frac > 0) & (h1.trained_frac < 1)).any(), h1.trained_frac   # some groups kept, some dropped
    for k in ('reward_rule', 'reward_rank', 'hit_frac', 'trained_frac', 'loss', 'kl', 'updates'):
        np.testing.assert_allclose(h1[k].values, h2[k].values, rtol=1e-3, atol=1e-7, err_msg=k)
    from minionerec.model import load_checkpoint
    m2, _ = load_checkpoint(root / 'two_f' / 'checkpoint')
    for (k, a), b in zip(one.model.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=k)

def test_two_processes_guided_groups_and_anchor_match_one(world):
    """`guide='target'` (the target joins every group that missed it) and `sft_weight` (one anchor row per group) change
    the rows per group: each process still runs the plan's micro-batches, and 2 processes equal 1."""
    root = world
    kw = dict(guide='target', sft_weight=0.5, filter_groups=True, num_generations=8, prompts_per_step=8, micro_batch=2, max_steps=2,
              eval_max_users=4, reward={'miss': 'zero'})
    p = _torchrun(root, root/'two_g', **kw)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    h2 = pd.read_csv(root / 'two_g' / 'history.csv')
    one = grpo_run(root, root/'one_g', **kw)
    h1 = one.history
    assert (h1.informative == 1).all() and (h1.guided_frac > 0).all()      # an untrained policy misses: every group is guided in
    assert h1.kl.iloc[1] > 0 and h1.grad_norm.notna().all()
    for k in ('reward_rule', 'reward_rank', 'hit_frac', 'guided_frac', 'informative', 'loss', 'kl', 'updates', 'grad_norm'):
        np.testing.assert_allclose(h1[k].values, h2[k].values, rtol=1e-3, atol=1e-7, err_msg=k)
    from minionerec.model import load_checkpoint
    m2, _ = load_checkpoint(root / 'two_g' / 'checkpoint')
    for (k, a), b in zip(one.model.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=k)

def test_deepspeed_zero2_two_cpu_processes(world):
    """GRPO under ZeRO-2 on 2 CPU processes: the trainer builds (its schedule is made before `prepare`, so the ZeRO
    optimizer is no obstacle), the engine takes one update per step with 2 micro-batches per process, and the first step's
    statistics equal the 1-process run's."""
    root = world
    p = _torchrun(root, root/'ds', timeout=400, deepspeed_cpu=True, prompts_per_step=8, micro_batch=2, max_steps=2)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]
    s = json.loads((root / 'ds' / 'summary.json').read_text())
    assert s['precision']['engine'] == 'deepspeed' and s['steps'] == s['updates'] == 2
    h2 = pd.read_csv(root / 'ds' / 'history.csv')
    h1 = grpo_run(root, root/'ds_one', prompts_per_step=8, micro_batch=2, max_steps=2).history
    for k in ('reward_rule', 'reward_rank', 'hit_frac', 'loss'):
        np.testing.assert_allclose(h1[k].values[:1], h2[k].values[:1], rtol=1e-3, atol=1e-6, err_msg=k)

def test_resume_after_kill_gives_the_same_run(world, tmp_path):
    """Kill after step 3 (last checkpoint at step 2), start again: the same history, validation rows and weights as an
    uninterrupted run; the state is JSON + a weights-only tensor file; another config is refused."""
    from minionerec.model import load_checkpoint
    kw = dict(max_steps=4, save_every=2, eval_every=0)
    full = grpo_run(world, tmp_path/'full', **kw)
    class Killed(Exception): pass
    def kill(step):
        if step == 3: raise Killed()
    with pytest.raises(Killed): grpo_run(world, tmp_path/'part', on_step=kill, **kw)
    state = json.loads((tmp_path/'part'/'last'/'trainer_state.json').read_text())
    assert state['step'] == 2 and len(state['rows']['history.csv']) == 2 and not list((tmp_path/'part'/'last').glob('*.pkl'))
    again = grpo_run(world, tmp_path/'part', **kw)
    timing = ['seconds', 'rollout_s', 'update_s']
    pd.testing.assert_frame_equal(again.history.drop(columns=timing), full.history.drop(columns=timing))
    pd.testing.assert_frame_equal(again.evals.drop(columns=['seconds']), full.evals.drop(columns=['seconds']))
    assert again.history.updates.tolist() == [1, 2, 3, 4]
    for (k, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=k)
    h = pd.read_csv(tmp_path/'part'/'history.csv')
    assert h.step.tolist() == [1, 2, 3, 4]                                     # the killed step 3 is not there twice
    m, _ = load_checkpoint(tmp_path/'part'/'last')                            # `last` is a servable checkpoint too
    with pytest.raises(ConfigError, match='different config'): grpo_run(world, tmp_path/'part', **{**kw, 'lr': 5e-3})

def test_tracking_writes_tensorboard_events(world, tmp_path):
    "report_to='tensorboard': every history and validation row reaches event files under the run's folder."
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    res = grpo_run(world, tmp_path/'rl', report_to='tensorboard', max_steps=2)
    ea = EventAccumulator(str(tmp_path/'rl'/'tensorboard')); ea.Reload()
    assert [e.step for e in ea.Scalars('rl/reward_total')] == [1, 2]
    assert [e.step for e in ea.Scalars('valid/NDCG@10')] == res.evals.step.tolist() == [0, 2]
