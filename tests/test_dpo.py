"""Preference learning (12c_dpo): the S-DPO loss against a hand-computed value, DPO == S-DPO with one negative, our DPO loss
== TRL's DPOTrainer on the same pairs, a few steps move the policy towards the target, and the pipeline's optional dpo
stage adds its row to the report when enabled (and nothing when not)."""
import copy, json, math, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

from minionerec.core import ConfigError
from minionerec.dpo import (SDPOConfig, sdpo_loss, dpo_loss, beam_negatives, random_negatives, preference_batch, sequence_logprobs,
                            train_sdpo, row_name)
from minionerec.grpo import sid_completions

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)

def test_sdpo_loss_matches_a_hand_computed_value():
    "r+ = 0.5 - 0.2 = 0.3, r- = (-0.3, -0.3), beta 2: -log sigmoid(-log(2 exp(-1.2))) = -log sigmoid(1.2 - log 2)."
    t = lambda *x: torch.tensor(x, dtype=torch.float64)
    got = sdpo_loss(t(0.5), t([0.1, -0.2]), t(0.2), t([0.4, 0.1]), beta=2.0).item()
    assert got == pytest.approx(-math.log(1 / (1 + math.exp(-(1.2 - math.log(2))))), abs=1e-12)
    assert got == pytest.approx(0.47150, abs=1e-5)
    z = torch.zeros(3, dtype=torch.float64)                       # policy == reference: log(1 + K)
    assert torch.allclose(sdpo_loss(z, torch.zeros(3, 4, dtype=torch.float64), z, torch.zeros(3, 4, dtype=torch.float64)), torch.full((3,), math.log(5), dtype=torch.float64))

def test_dpo_equals_sdpo_with_one_negative():
    g = torch.Generator().manual_seed(1)
    lp, ln, rp, rn = (torch.randn(16, generator=g) * 3 for _ in range(4))
    for beta in (0.1, 1.0, 5.0):
        torch.testing.assert_close(sdpo_loss(lp, ln[:, None], rp, rn[:, None], beta), dpo_loss(lp, ln, rp, rn, beta))
    # and the gradients agree too
    a = lp.clone().requires_grad_(); b = lp.clone().requires_grad_()
    sdpo_loss(a, ln[:, None], rp, rn[:, None], 0.5).sum().backward(); dpo_loss(b, ln, rp, rn, 0.5).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)

def test_config_is_strict():
    c = SDPOConfig.tiny()
    assert SDPOConfig.from_yaml(c.to_yaml()) == c and not SDPOConfig().enabled
    with pytest.raises(ConfigError, match="did you mean 'negatives'"): SDPOConfig.from_dict({'negative': 2})
    with pytest.raises(ConfigError, match='multiple of micro_batch'): SDPOConfig(prompts_per_step=6, micro_batch=4)
    with pytest.raises(ConfigError, match='negatives'): SDPOConfig(negatives=0)
    assert (row_name(c), row_name(c.replace(loss='dpo'))) == ('MiniOneRec SFT+S-DPO', 'MiniOneRec SFT+DPO')

@pytest.fixture(scope='module')
def world():
    "The tiny synthetic catalogue, a leaf-ordered SID index, a tiny Qwen2 with SID tokens, the trie, the next-SID prompts."
    from minionerec.synthetic import make_synthetic, SyntheticConfig
    from minionerec.sid import SIDIndex
    from minionerec.model import load_backbone, add_sid_tokens, ModelConfig
    from minionerec.decoding import SIDTrie
    from minionerec.tasks import rl_examples
    data = make_synthetic(SyntheticConfig.tiny()); n = len(data.items)
    index = SIDIndex(np.stack([np.arange(n) // 16, (np.arange(n) // 4) % 4, np.arange(n) % 4], 1))
    torch.manual_seed(0)
    model, tok = load_backbone(ModelConfig.tiny(), data.items.title.tolist())
    add_sid_tokens(tok, model, index)
    return {'data': data, 'index': index, 'model': model, 'tok': tok, 'trie': SIDTrie.from_index(index, tok),
            'train': rl_examples(data, index, 'train', ('rec',)), 'valid': rl_examples(data, index, 'valid', ('rec',))}

def test_negatives_are_distinct_and_never_the_target(world):
    ex = world['train'][:8]; tg = np.array([e['item_id'] for e in ex])
    neg, hit = beam_negatives(world['model'], world['tok'], [e['prompt'] for e in ex], tg, world['trie'], k=3, batch_size=8)
    assert neg.shape == (8, 3) and not (neg == tg[:, None]).any() and all(len(set(r)) == 3 for r in neg) and hit.shape == (8,)
    rn = random_negatives(tg, world['index'].n_items, 6, seed=3)
    assert not (rn == tg[:, None]).any() and all(len(set(r)) == 6 for r in rn)

def _margin(model, w, ex, neg):
    "Mean over prompts of log pi(target) - log sum_j pi(negative_j): how far the policy prefers the target."
    tg = np.array([e['item_id'] for e in ex])
    b = preference_batch([e['prompt'] for e in ex], tg, neg, w['tok'], sid_completions(w['index'], w['tok']))
    with torch.no_grad(): s = sequence_logprobs(model.eval(), b).view(len(ex), -1)
    return float((s[:, 0] - torch.logsumexp(s[:, 1:], 1)).mean())

@pytest.mark.parametrize('loss', ['sdpo', 'dpo'])
def test_a_few_steps_move_the_policy_towards_the_target(world, loss):
    "S-DPO / DPO on 8 fixed prompts for 6 steps: the loss starts at log(1 + K) and the policy's log-prob margin of the target over its negatives grows."
    ex = world['train'][::100][:8]
    cfg = SDPOConfig.tiny().replace(loss=loss, negatives=3, prompts_per_step=8, micro_batch=4, max_steps=6, lr=3e-3)
    start = copy.deepcopy(world['model'])
    neg, _ = beam_negatives(start, world['tok'], [e['prompt'] for e in ex], [e['item_id'] for e in ex], world['trie'], k=cfg.k)
    before = _margin(start, world, ex, neg)
    res = train_sdpo(cfg, copy.deepcopy(start), world['tok'], world['index'], ex, trie=world['trie'])
    h = res.history
    assert len(h) == 6 and h.updates.tolist() == list(range(1, 7))
    assert h.loss.iloc[0] == pytest.approx(math.log(1 + cfg.k), abs=1e-4)
    assert h.margin.iloc[-1] > h.margin.iloc[0] + 0.1 and h.loss.iloc[-1] < h.loss.iloc[0]
    after = _margin(res.model, world, ex, neg)               # the same negatives: the SFT model's beams are deterministic
    assert after > before + 0.1, (before, after)

def test_sft_anchor_adds_the_targets_nll_per_token(world):
    "`sft_weight` adds sft_weight x (-log pi(target)) / target tokens to each prompt's S-DPO loss, nothing else."
    from minionerec.dpo import RecSDPOTrainer
    tr = RecSDPOTrainer(SDPOConfig.tiny().replace(sft_weight=2.0), copy.deepcopy(world['model']), world['tok'], world['index'], world['trie'])
    lp = torch.tensor([-8., -9., -10., -11., -4., -5., -6., -7.]); ref = lp - 0.1 * torch.arange(8)
    loss, margin = tr.pref_loss(lp, ref, 4, torch.tensor([4, 4]))
    plain = sdpo_loss(lp.view(2, 4)[:, 0], lp.view(2, 4)[:, 1:], ref.view(2, 4)[:, 0], ref.view(2, 4)[:, 1:], 1.0)
    torch.testing.assert_close(loss, plain + 2.0 * torch.tensor([8., 4.]) / 4)
    r = (lp - ref).view(2, 4)
    torch.testing.assert_close(margin, r[:, 0] - r[:, 1:].max(1).values)

def test_keep_best_returns_the_starting_weights_when_nothing_beats_them(world, tmp_path):
    "lr that wrecks the model: validation never beats step 0, so the returned weights are the starting ones and the files say so."
    cfg = SDPOConfig.tiny().replace(max_steps=2, lr=5.0, max_grad_norm=0, eval_every=1, keep_best=True, eval_max_users=16)
    start = copy.deepcopy(world['model'])
    res = train_sdpo(cfg, copy.deepcopy(start), world['tok'], world['index'], world['train'][:16], world['valid'], out_dir=tmp_path, trie=world['trie'])
    assert res.evals.step.tolist() == [0, 1, 2] and res.best_step == 0, res.evals
    for (k, a), b in zip(start.state_dict().items(), res.model.state_dict().values()): torch.testing.assert_close(a, b, msg=k)
    assert json.loads((tmp_path/'summary.json').read_text())['best_step'] == res.best_step
    assert (tmp_path/'checkpoint'/'config.json').exists() and (tmp_path/'dpo.png').exists()

def test_our_dpo_loss_matches_trl_dpo_trainer(world, tmp_path):
    "TRL's DPOTrainer tokenizes our SID completions to the same ids and its _compute_loss equals our dpo_loss on the same pairs."
    os.environ['TRL_EXPERIMENTAL_SILENCE'] = '1'
    from datasets import Dataset
    from trl import DPOTrainer, DPOConfig
    w, ex = world, world['train'][:6]
    tg = np.array([e['item_id'] for e in ex]); neg = random_negatives(tg, w['index'].n_items, 1, seed=0)
    ref = w['model']; pol = copy.deepcopy(ref)
    with torch.no_grad():
        for p in pol.parameters(): p.add_(0.02 * torch.randn_like(p))       # a policy away from its reference
    ds = Dataset.from_dict({'prompt': [e['prompt'] for e in ex], 'chosen': [w['index'].sid(int(t)) for t in tg], 'rejected': [w['index'].sid(int(r[0])) for r in neg]})
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, use_cpu=True, report_to=[], save_strategy='no', beta=0.5, bf16=False)
    tr = DPOTrainer(model=pol, ref_model=copy.deepcopy(ref), args=args, train_dataset=ds, processing_class=w['tok'])
    comp = sid_completions(w['index'], w['tok'])
    assert [r['chosen_ids'] for r in tr.train_dataset] == [comp[0][t][:comp[1][t]].tolist() for t in tg]
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(ex))])
    with torch.no_grad():
        theirs = tr._compute_loss(tr.model.eval(), batch, False).item()
        b = preference_batch([e['prompt'] for e in ex], tg, neg, w['tok'], comp)
        lp, rf = sequence_logprobs(pol.eval(), b).view(-1, 2), sequence_logprobs(ref.eval(), b).view(-1, 2)
    ours = dpo_loss(lp[:, 0], lp[:, 1], rf[:, 0], rf[:, 1], 0.5).mean().item()
    assert abs(ours - math.log(2)) > 1e-3                      # not the trivial policy == reference value
    assert ours == pytest.approx(theirs, abs=1e-5)

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'MINIONEREC_QUIET': '1', 'TOKENIZERS_PARALLELISM': 'false',
       'PYTHONPATH': str(REPO)}

def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'minionerec.cli', *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)

def test_pipeline_row_appears_when_enabled_and_not_otherwise(tmp_path):
    "The tiny pipeline with `dpo.enabled=true`: the dpo stage's row in the results, the bootstrap table (vs SFT) and the report; switched off, the row is gone."
    run = tmp_path/'run'
    quick = [a for o in ('baselines.mf=null', 'baselines.tiger=null', 'baselines.hstu=null', 'stages=[prepare,embed,sid,sft,evaluate,dpo,report]')
             for a in ('--set', o)]
    r = _cli('pipeline', '--config', 'tiny', '--run-dir', str(run), '--set', 'dpo.enabled=true', *quick)
    assert r.returncode == 0, r.stderr[-3000:]
    name = 'MiniOneRec SFT+S-DPO'
    done = json.loads((run/'dpo'/'DONE.json').read_text())['metrics']
    assert done['enabled'] and done['model'] == name and done['steps'] == SDPOConfig.tiny().max_steps
    assert {b['metric'] for b in done['bootstrap']['test']} >= {'NDCG@10', 'HR@10'} and 'valid' in done['bootstrap']
    assert name in json.loads((run/'dpo'/'metrics.json').read_text()) and (run/'dpo'/'ranks_valid.csv').exists()
    comps = json.loads((run/'report'/'comparisons.json').read_text())
    pairs = {(t['split'], t['model'], t['vs']) for t in comps['table']}
    assert {('test', name, 'MiniOneRec SFT'), ('valid', name, 'MiniOneRec SFT'), ('test', name, 'SASRec')} <= pairs
    report = (run/'report'/'report.md').read_text()
    assert f'| {name} |' in (run/'report'/'results.md').read_text() and '## SFT vs SFT+S-DPO' in report and 'SFT+S-DPO kept step' in report
    r = _cli('pipeline', '--config', 'tiny', '--run-dir', str(run), '--set', 'dpo.enabled=false', *quick)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run/'dpo'/'summary.json').read_text()) == {'enabled': False} and not (run/'dpo'/'ranks.csv').exists()
    assert name not in (run/'report'/'report.md').read_text()
