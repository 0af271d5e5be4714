"""The language-prior backbone (06_model, `ModelConfig(backbone='minilm')`) through every stage at tiny size (1 layer, the
catalogue's word pieces): SID tokens, SFT (full and LoRA, with SFT dropout), the constrained beam search with its KV
cache, GRPO, and checkpoints that load back with plain `AutoModelForCausalLM` as a cut-vocabulary BERT decoder."""
import sys
from pathlib import Path
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dist_runs import synthetic_world, grpo_run
from minionerec.model import (ModelConfig, load_backbone, add_sid_tokens, apply_training_mode, add_dropout, save_checkpoint,
                              load_checkpoint, load_weights, left_pad, pad_id, lora_targets)
from minionerec.encode import prompt_ids
torch.set_num_threads(1)

PRIOR = ModelConfig(backbone='minilm', prior_layers=1, lora_r=4, lora_alpha=8)


def _texts(data): return [t for t in data.items.title.tolist() + data.items.description.tolist() if t]


@pytest.fixture(scope='module')
def world():
    data, index = synthetic_world()
    return data, index


def _prior(world, **kw):
    data, index = world
    cfg = PRIOR.replace(**kw)
    model, tok = load_backbone(cfg, _texts(data))
    ids = add_sid_tokens(tok, model, index, seed=0)
    return apply_training_mode(model, cfg, ids), tok, ids


def _logits(model, tok, prompts):
    ids, mask = left_pad(prompt_ids(tok, prompts), pad_id(tok))
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    model.eval()
    with torch.no_grad(): return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def test_sid_tokens_and_targets(world):
    from minionerec.encode import tokenize_examples
    from minionerec.tasks import rec_examples
    data, index = world
    model, tok, ids = _prior(world)
    assert type(model).__name__ == 'BertLMHeadModel' and model.config.num_hidden_layers == 1
    assert len(tok) < 8000 and model.get_input_embeddings().weight.shape[0] >= len(tok)     # cut from 30,522 word pieces
    assert tok.convert_ids_to_tokens(ids) == index.vocab()
    for i in range(0, index.n_items, 7):                               # one id per SID token, also after the response header
        assert tok(index.sid(i), add_special_tokens=False)['input_ids'] == tok.convert_tokens_to_ids(index.tokens(i))
    f = tokenize_examples(rec_examples(data, index, 'train')[:3], tok, 512)
    for x in f:
        assert x['input_ids'][0] == tok.cls_token_id and x['input_ids'][-1] == tok.eos_token_id != tok.pad_token_id
        lab = [t for t in x['labels'] if t != -100]
        assert lab[-1] == tok.eos_token_id and len(lab) == index.n_levels + 1


def test_lora_targets_are_bert_modules(world):
    model, _, _ = _prior(world)
    assert lora_targets(model, PRIOR.lora_target_modules) == ['query', 'key', 'value', 'attention.output.dense', 'intermediate.dense', 'output.dense']


@pytest.mark.parametrize('mode', ['full', 'lora'])
def test_sft_trains_and_checkpoint_reloads(world, mode, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from minionerec.tasks import TaskMixConfig, build_mixture
    from minionerec.sft import SFTConfig, train_sft, sft_loss
    data, index = world
    model, tok, _ = _prior(world, mode=mode)
    hooks = add_dropout(model, 0.1)                                     # SFT dropout on the BERT sites
    assert len(hooks) == 3
    mix = TaskMixConfig(max_per_task=8)
    train, valid = build_mixture(data, index, 'train', mix, seed=0), build_mixture(data, index, 'valid', mix, seed=0)
    before = sft_loss(model, tok, train[:16], 256)['all']
    cfg = SFTConfig(epochs=1, max_steps=6, lr=3e-3 if mode == 'full' else 1e-2, global_batch_size=8, micro_batch_size=4,
                    max_length=256, warmup_ratio=0.0, eval_every=3)
    res = train_sft(cfg, model, tok, train, valid, out_dir=tmp_path, index=index)
    assert sft_loss(model, tok, train[:16], 256)['all'] < before
    for h in hooks: h.remove()
    ck = res.last_checkpoint
    plain = AutoModelForCausalLM.from_pretrained(ck).eval()             # a cut-vocabulary BERT decoder, as saved
    tok2 = AutoTokenizer.from_pretrained(ck)
    assert type(plain).__name__ == 'BertLMHeadModel' and plain.config.is_decoder and plain.config.num_hidden_layers == 1
    assert plain.config.vocab_size == model.get_input_embeddings().weight.shape[0]
    prompts = [e['prompt'] for e in valid[:3]]
    assert prompt_ids(tok2, prompts) == prompt_ids(tok, prompts) and tok2.eos_token_id == tok.eos_token_id
    torch.testing.assert_close(_logits(plain, tok2, prompts), _logits(model, tok, prompts), rtol=1e-4, atol=1e-4)
    again, _ = load_checkpoint(ck)
    torch.testing.assert_close(_logits(again, tok2, prompts), _logits(model, tok, prompts), rtol=1e-4, atol=1e-4)
    fresh, _, _ = _prior(world, mode=mode)                             # untrained; loaded in place as keep-best restores (tied head weight, bias)
    load_weights(fresh, ck)
    torch.testing.assert_close(_logits(fresh, tok, prompts), _logits(model, tok, prompts), rtol=1e-4, atol=1e-4)


def test_beam_search_cache_matches_teacher_forcing(world):
    "Our KV-cached beam search and HF `generate` agree, and every beam's score equals the uncached log-prob of its SID."
    from minionerec.decoding import SIDTrie, sid_beam_search, constrained_generate
    from minionerec.tasks import rec_examples
    data, index = world
    model, tok, _ = _prior(world, seed=3)
    model.eval()
    exs = rec_examples(data, index, 'valid')[:5]                     # histories of different lengths: left padding
    prompts = [e['prompt'] for e in exs]
    trie = SIDTrie.from_index(index, tok)
    b = sid_beam_search(model, tok, prompts, trie, num_beams=8, batch_size=5)
    a = constrained_generate(model, tok, prompts, trie, num_beams=8, batch_size=5)
    assert torch.equal(a.items, b.items)
    assert (b.items >= 0).all() and b.n_duplicates() == 0
    for u, p in enumerate(prompts):
        for k in (0, 3, 7):
            item = int(b.items[u, k])
            full = prompt_ids(tok, [p])[0] + tok.convert_tokens_to_ids(index.tokens(item)) + [tok.eos_token_id]
            x = torch.tensor([full])
            with torch.no_grad(): lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
            n = index.n_levels + 1
            want = lp[-n:].gather(1, x[0, -n:, None]).sum()
            assert abs(float(want) - float(b.scores[u, k])) < 1e-3, (u, k, float(want), float(b.scores[u, k]))


def test_grpo_runs_and_saves_a_bert_decoder(world, tmp_path):
    from transformers import AutoModelForCausalLM
    from minionerec.data import write_published
    data, index = world
    model, tok, _ = _prior(world)
    root = tmp_path/'world'
    write_published(data, root/'data'); index.to_json(root/'index.json')
    save_checkpoint(model, tok, root/'ckpt', index=index)
    res = grpo_run(root, tmp_path/'rl', max_steps=2)
    assert res.steps == 2
    start = AutoModelForCausalLM.from_pretrained(root/'ckpt')
    moved = [n for (n, p), q in zip(res.model.named_parameters(), start.parameters()) if not torch.equal(p.detach(), q)]
    assert moved                                                       # GRPO updated the policy
    plain = AutoModelForCausalLM.from_pretrained(tmp_path/'rl'/'checkpoint')
    assert type(plain).__name__ == 'BertLMHeadModel'
    prompts = ['Items: ' + index.sid(1) + index.sid(2) + '\n### Response:\n']
    torch.testing.assert_close(_logits(plain, tok, prompts), _logits(res.model, tok, prompts), rtol=1e-4, atol=1e-4)


def _ablation():
    import importlib.util
    spec = importlib.util.spec_from_file_location('ablation', Path(__file__).resolve().parents[1]/'bench'/'ablation.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_ablation_cells_budget_and_intervals(world):
    "bench/ablation.py's pieces (the end-to-end run on the tiny preset is in chapter 9a's instructions; it takes minutes)."
    from minionerec.presets import preset
    ab = _ablation()
    with pytest.raises(SystemExit): ab.parse_args(['run', '--sft_steps', '2', '--sft_budget_s', '5'])   # one budget only
    with pytest.raises(SystemExit): ab.parse_args(['run', '--sft_steps', '2', '--cells', 'prior/rec/rl'])
    a = ab.parse_args(['run', '--sft_steps', '2', '--prior_layers', '2', '--align', 'title2sid+sid2title'])
    assert len(a.cells) == 8 and a.cells[0] == ab.REF and not any(c.startswith('catalogue/') for c in a.cells)
    assert len(ab.parse_args(['run', '--sft_steps', '2', '--pretrain_steps', '50']).cells) == 12
    with pytest.raises(SystemExit): ab.parse_args(['run', '--sft_steps', '2', '--cells', 'catalogue/rec/sft'])   # needs --pretrain_steps
    assert ab.cell_config(preset('tiny'), ab.parse_args(['run', '--sft_steps', '1', '--pretrain_steps', '50']), 'catalogue', 'rec').model.pretrain_steps == 50
    base = preset('tiny')
    c = ab.cell_config(base, a, 'prior', 'align')
    assert (c.model.backbone, c.model.prior_layers, c.tasks.align_holdout) == ('minilm', 2, 0.05)
    assert c.tasks.title2sid == c.tasks.sid2title == 1.0 and c.tasks.preference == c.tasks.sid_hist2title == 0.0
    r = ab.cell_config(base, a, 'scratch', 'rec')
    assert r.model == base.model and r.tasks.align_holdout == 0 and all(w == 0 for t, w in r.tasks.weights().items() if t != 'rec')
    data, _ = world
    s1, s2 = ab.subset_rows(data, 100, 0), ab.subset_rows(data, 100, 0)
    assert len(s1.splits['train']) == 100 and s1.splits['train'].equals(s2.splits['train']) and s1.splits['valid'] is data.splits['valid']
    from minionerec.evaluate import row_metric              # the per-row NDCG@10 the grid reports
    assert row_metric(np.array([0, 1, 3, 11]), 'NDCG', 10).tolist() == [0.0, 1.0, 0.5, 0.0]
    rng = np.random.default_rng(0)
    x, users = rng.integers(0, 15, 400), rng.integers(0, 50, 400)
    assert ab.gain_difference(x, x, x, x, users) == {'NDCG@10_delta': 0.0, 'NDCG@10_lo': 0.0, 'NDCG@10_hi': 0.0}
    g = ab.gain_difference(x, np.where(x > 0, 1, 0), x, x, users)                     # RL helps only the prior
    assert 0 < g['NDCG@10_lo'] <= g['NDCG@10_delta'] <= g['NDCG@10_hi']


def test_sft_stage_with_the_prior_logs_the_probe(tmp_path):
    "The pipeline's sft stage on the tiny preset with the MiniLM backbone and held-out items: the probe is in scores.csv and the summary."
    import pandas as pd
    from minionerec.presets import load_config
    from minionerec.pipeline import run_pipeline
    from minionerec.core import read_json
    cfg = load_config('tiny', [f'run_dir={tmp_path/"run"}', 'model.backbone=minilm', 'model.prior_layers=1', 'tasks.align_holdout=0.1',
                               'sft.max_steps=2', 'sft.eval_every=1'])
    run_pipeline(cfg, stages=['prepare', 'embed', 'sid', 'sft'])
    done = read_json(tmp_path/'run'/'sft'/'DONE.json')['metrics']
    probe = done['align_probe']
    assert set(probe) == {'title2sid_level1', 'title2sid_level2', 'title2sid_exact', 'sid2title_token_acc'}
    assert all(0 <= v <= 1 for v in probe.values())
    sc = pd.read_csv(tmp_path/'run'/'sft'/'scores.csv')
    assert set(sc['name']) >= set(probe) and sorted(sc['step'].unique()) == [0, 1, 2]
    assert checkpoint_is_bert(tmp_path/'run'/'sft'/done['checkpoint'])


def checkpoint_is_bert(path) -> bool:
    from minionerec.core import read_json
    c = read_json(Path(path)/'config.json')
    return c['model_type'] == 'bert' and c['is_decoder'] and c['num_hidden_layers'] == 1
