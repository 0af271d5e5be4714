"""Integration tests of tasks (05) and model (06): the task mixture through a tiny backbone, tokenizer extension,
training modes and checkpoints, on the synthetic catalogue and (when present) the published Industrial data."""
import numpy as np
import pytest
import torch

from minionerec.data import load_published
from minionerec.synthetic import make_synthetic, SyntheticConfig
from minionerec.sid import SIDIndex
from minionerec.tasks import (RESPONSE_HEADER, TASKS, SID_TARGET_TASKS, TaskMixConfig, build_mixture, task_counts,
                              task_examples, rec_examples, leaked, format_prompt, INSTRUCTIONS, with_history)
from minionerec.model import (ModelConfig, load_backbone, add_sid_tokens, apply_training_mode, param_groups,
                              save_checkpoint, load_checkpoint, checkpoint_meta, count_parameters)

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def synth():
    data = make_synthetic(SyntheticConfig.tiny())
    leaf = data.items.categories.map(lambda c: c[-1]).astype('category').cat.codes.to_numpy()
    rank = data.items.groupby(leaf).cumcount().to_numpy()
    return data, SIDIndex(np.stack([leaf, rank // 4, rank % 4], 1), (16, 8, 4))


@pytest.fixture(scope='module')
def backbone(synth):
    data, index = synth
    texts = data.items.title.tolist() + data.items.description.tolist()
    model, tok = load_backbone(ModelConfig.tiny(), texts)
    ids = add_sid_tokens(tok, model, index, init='title', texts=data.items.title.tolist())
    return model, tok, ids


def test_every_task_has_examples_and_one_scaffold(synth):
    data, index = synth
    for t in TASKS:
        ex = task_examples(t, data, index, 'train')
        assert ex, t
        for e in ex[:50]:
            assert {'prompt', 'target', 'task', 'item_id'} <= set(e) <= {'prompt', 'target', 'task', 'item_id', 'frame', 'hist', 'keep'}
            assert e['task'] == t and e['target']
            if 'hist' in e: assert e['prompt'] == with_history(e, len(e['hist']))['prompt'] == e['frame'][0] + e['frame'][1].join(e['hist']) + e['frame'][2]
            assert e['prompt'] == format_prompt(INSTRUCTIONS[t], e['prompt'].split('### Input:\n')[1].rsplit('\n\n' + RESPONSE_HEADER, 1)[0])


def test_sid_targets_are_real_items_and_never_leak(synth):
    data, index = synth
    sids = set(index.sids())
    mix = build_mixture(data, index, 'train', TaskMixConfig(desc2sid=1.0))
    for e in mix:
        if e['task'] in SID_TARGET_TASKS:
            assert e['target'] in sids and index.item_id(e['target']) == e['item_id']
            if e['task'] != 'rec': assert not leaked(e), e
    # a recommendation prompt holds its target only when the target is a repeat of a shown history item
    df = data.splits['test']
    for e, h, t in zip(rec_examples(data, index, 'test'), df.history, df.target):
        assert leaked(e) == (t in set(list(h)[-10:]))


def test_mixture_tokenizes_cleanly(synth, backbone):
    "Each SID target is exactly L SID ids, decodes back to itself, and prompts never hold EOS/pad text."
    data, index = synth
    model, tok, ids = backbone
    sid_ids = set(ids)
    mix = build_mixture(data, index, 'train', TaskMixConfig.tiny())
    assert set(task_counts(mix)) == set(TASKS) - {'desc2sid'}
    for e in mix:
        t = tok(e['target'], add_special_tokens=False)['input_ids']
        assert tok.decode(t + [tok.eos_token_id], skip_special_tokens=True) == e['target']
        if e['task'] in SID_TARGET_TASKS:
            assert len(t) == index.n_levels and set(t) <= sid_ids
            # glued to the prompt, the target still tokenizes to the same ids (prompt ids are a prefix)
            p = tok(e['prompt'], add_special_tokens=False)['input_ids']
            assert tok(e['prompt'] + e['target'], add_special_tokens=False)['input_ids'] == p + t
        else:
            assert not set(t) & sid_ids
        assert tok.eos_token not in e['prompt'] and tok.pad_token not in e['prompt']


def _sft_steps(model, tok, examples, steps, lr=3e-3, wd=0.0):
    "A minimal completion-only loop (the real trainer is 07_sft)."
    opt = torch.optim.AdamW(param_groups(model, wd), lr=lr)
    rows = []
    for e in examples:
        p = tok(e['prompt'], add_special_tokens=False)['input_ids']
        t = tok(e['target'], add_special_tokens=False)['input_ids'] + [tok.eos_token_id]
        rows.append((p + t, [-100] * len(p) + t))
    T = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [tok.pad_token_id] * (T - len(r[0])) for r in rows])
    lab = torch.tensor([r[1] + [-100] * (T - len(r[1])) for r in rows])
    att = (torch.arange(T)[None] < torch.tensor([len(r[0]) for r in rows])[:, None]).long()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward(); opt.step(); opt.zero_grad(); losses.append(loss.item())
    return losses


@pytest.mark.parametrize('mode', ['full', 'lora', 'frozen'])
def test_modes_overfit_and_round_trip(synth, mode, tmp_path):
    data, index = synth
    texts = data.items.title.tolist()
    cfg = ModelConfig.tiny().replace(mode=mode, tie_embeddings=(mode != 'frozen'))
    model, tok = load_backbone(cfg, texts)
    ids = add_sid_tokens(tok, model, index)
    model = apply_training_mode(model, cfg, ids)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ex = rec_examples(data, index, 'train')[:4]
    losses = _sft_steps(model, tok, ex, steps=25, lr=1e-2 if mode != 'full' else 3e-3, wd=0.1)
    assert losses[-1] < 0.8 * losses[0], (mode, losses[0], losses[-1])
    for n, p in model.named_parameters():
        if mode == 'frozen' and hasattr(p, 'grad_row_mask'):
            moved = (p.detach() != before[n]).any(1)
            assert moved.any() and not moved[torch.as_tensor(p.grad_row_mask[:, 0] == 0)].any(), n
        elif not p.requires_grad:
            assert torch.equal(p, before[n]), n
    assert 0 < count_parameters(model, trainable=True) <= count_parameters(model)
    d = save_checkpoint(model, tok, tmp_path/'ckpt', extra={'mode': mode})
    m2, t2 = load_checkpoint(d)
    assert checkpoint_meta(d)['extra'] == {'mode': mode}
    batch = tok([e['prompt'] + e['target'] for e in ex], return_tensors='pt', padding=True)
    assert t2([e['prompt'] + e['target'] for e in ex])['input_ids'] == tok([e['prompt'] + e['target'] for e in ex])['input_ids']
    model.eval()
    with torch.no_grad(): assert torch.allclose(m2(**batch).logits, model(**batch).logits, atol=1e-5)


def test_published_industrial(amazon_root):
    "On the real data: the published SIDs extend a tiny tokenizer, every SID is 3 ids, the mixture has every task."
    data = load_published(amazon_root)
    index = SIDIndex.from_published(data)
    model, tok = load_backbone(ModelConfig.tiny().replace(vocab_size=2000), data.items.title.tolist())
    ids = add_sid_tokens(tok, model, index)
    rows = model.get_input_embeddings().weight.shape[0]
    assert len(ids) == len(index.vocab()) and len(tok) <= rows < len(tok) + 64 and rows % 64 == 0   # padded to a multiple of 64
    enc = tok([RESPONSE_HEADER + s for s in index.sids()], add_special_tokens=False)['input_ids']
    hdr = len(tok(RESPONSE_HEADER, add_special_tokens=False)['input_ids'])
    assert all(e[hdr:] == tok.convert_tokens_to_ids(index.tokens(i)) for i, e in enumerate(enc))
    mix = build_mixture(data, index, 'train', TaskMixConfig(max_per_task=500))
    c = task_counts(mix)
    assert set(c) == set(TASKS) - {'desc2sid'} and all(v == 500 for v in c.values())
    desc, skipped = __import__('minionerec.tasks', fromlist=['x']).sid_history_to_description_examples(data, index, 'valid', return_skipped=True)
    assert skipped > 0 and len(desc) + skipped == len(data.splits['valid'])   # Industrial has items without a description
