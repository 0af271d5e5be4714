"""Evaluation metrics and baselines: hand-computed metrics, popularity reproducing the published reference on the real
Industrial split (skipped when absent), SASRec/GRU4Rec learning a planted pattern, and the side-by-side report."""
import json, math
import numpy as np
import pandas as pd
import pytest
import torch

from minionerec.evaluate import (rank_of_target, hit_rate_at_k, ndcg_at_k, mrr, rank_metrics, count_invalid,
                                 count_duplicates, evaluate_rankings, write_report, decoded_examples)
from minionerec.baselines import (popularity_ranking, popularity_counts, evaluate_popularity, planted_data, SASRecConfig,
                                  GRU4RecConfig, train_sasrec, train_gru4rec, sasrec_ranking, seq_ranking)
from minionerec.compare import compare_baselines   # chapter 12d: it also trains TIGER (10a) and HSTU (10c)

REFERENCE_POP = {'HR@3': 0.0457, 'HR@5': 0.0529, 'HR@10': 0.0673, 'NDCG@3': 0.0394, 'NDCG@5': 0.0423, 'NDCG@10': 0.0469}


def test_metrics_hand_computed():
    ranked = np.array([[7, 1, 2, 3], [4, 5, 9, 6], [1, 2, 3, -1]])
    targets = np.array([7, 9, 8])
    assert rank_of_target(ranked, targets).tolist() == [1, 3, 0]
    assert ndcg_at_k(ranked[:1], targets[:1], 10) == 1.0                 # rank 1 -> NDCG 1
    assert ndcg_at_k(ranked[1:2], targets[1:2], 10) == pytest.approx(0.5)   # rank 3 -> 1/log2(4)
    assert ndcg_at_k(ranked[2:], targets[2:], 10) == 0.0                  # absent -> 0
    assert hit_rate_at_k(ranked, targets, 2) == pytest.approx(1 / 3)
    assert mrr(ranked, targets) == pytest.approx((1 + 1 / 3) / 3)
    m = rank_metrics(ranked, targets, ks=(1, 3, 10))
    assert 'HR@10' not in m and m['NDCG@3'] == pytest.approx(0.5)        # K beyond the list length is not reported
    assert count_invalid([[0, 5, -1, 9]], n_items=5) == 2
    assert count_duplicates([[1, 1, 2, -1, -1]]) == 1


def test_history_items_are_not_excluded():
    "A repeat purchase (target already in the history) counts as a hit: rankings are scored as given."
    items = pd.DataFrame({'item_id': range(3), 'title': list('abc')})
    df = pd.DataFrame({'user_id': ['u'], 'history': [[2, 1]], 'target': [2]})
    data = type('D', (), {'items': items, 'splits': {'test': df}})()
    r = evaluate_rankings('x', [[2, 0, 1]], [2], data, 'test', ks=(1,))
    assert r.metrics['HR@1'] == 1.0 and r.by_history.loc['2', 'rows'] == 1


def test_sasrec_learns_planted_pattern():
    torch.set_num_threads(1)
    data = planted_data(n_users=150, n_items=40, seed=1)
    pop = evaluate_popularity(data, 'test', k=40, ks=(10,))
    model, hist = train_sasrec(data, SASRecConfig.tiny())
    ranked = sasrec_ranking(model, data, 'test', k=40)
    assert ranked.shape == (150, 40) and count_duplicates(ranked) == 0 and count_invalid(ranked, 40) == 0
    m = rank_metrics(ranked, data.splits['test'].target.values, ks=(1, 10))
    assert m['HR@10'] > pop.metrics['HR@10'] + 0.3, (m, pop.metrics)
    assert m['HR@1'] > 0.5
    assert hist['loss'].iloc[-1] < hist['loss'].iloc[0]


def test_gru4rec_learns_planted_pattern():
    torch.set_num_threads(1)
    data = planted_data(n_users=150, n_items=40, seed=2)
    model, hist = train_gru4rec(data, GRU4RecConfig.tiny())
    m = rank_metrics(seq_ranking(model, data, 'test', k=40), data.splits['test'].target.values, ks=(10,))
    assert m['HR@10'] > 0.6, m


def test_report_side_by_side(tmp_path):
    torch.set_num_threads(1)
    data = planted_data(n_users=60, n_items=30, seed=3)
    res = compare_baselines(data, tmp_path, sasrec=SASRecConfig.tiny().replace(epochs=1), gru4rec=False, k=30,
                            ks=(3, 5, 10), extra={'reference': dict(REFERENCE_POP)})
    assert list(res) == ['reference', 'Popularity', 'SASRec']
    js = json.loads((tmp_path / 'metrics.json').read_text())
    assert js['SASRec']['rows'] == 60 and js['SASRec']['invalid'] == 0 and js['SASRec']['duplicates'] == 0
    md = (tmp_path / 'results.md').read_text()
    assert '| reference | 0.0457 | 0.0529 | 0.0673 | 0.0394 | 0.0423 | 0.0469 | - |' in md
    assert (tmp_path / 'results.png').stat().st_size > 0


def test_popularity_reproduces_reference(amazon_root):
    from minionerec.data import load_published
    data = load_published(amazon_root)
    res = evaluate_popularity(data, 'test')                        # counts train + valid targets
    for k, v in REFERENCE_POP.items():
        assert round(res.metrics[k], 4) == v, (k, res.metrics[k], v)
    assert (res.n_invalid, res.n_duplicates) == (0, 0)
    assert res.by_history['rows'].sum() == len(data.splits['test']) == 4533
    # the tie rule is what makes it exact: items 1847 and 3016 tie at 38 train+valid targets for rank 10;
    # breaking ties by item id alone puts 1847 (25 test hits) first and gives HR@10 0.0690
    counts = popularity_counts(data)
    top = popularity_ranking(data, 50)
    assert counts[1847] == counts[3016] == 38 and top[9] == 3016 and top[10] == 1847
    by_id = np.lexsort((np.arange(len(counts)), -counts))[:50]
    alt = rank_metrics(np.tile(by_id, (4533, 1)), data.splits['test'].target.values, ks=(10,))
    assert round(alt['HR@10'], 4) == 0.0690
    ex = decoded_examples(res, data, n=3)
    assert len(ex) == 3 and ex['history'].str.len().min() > 0


# --- MF, HSTU and TIGER ---
from minionerec.baselines import MF, MFConfig, train_mf, seq_loss
from minionerec.hstu import HSTU, HSTULayer, HSTUConfig, train_hstu, hstu_ranking
from minionerec.core import ConfigError
from minionerec.sid import SIDIndex


def random_index(n_items, seed=0):
    "Unique random 3-level SIDs (no semantics) for `n_items` <= 50 items."
    perm = np.random.default_rng(seed).permutation(n_items)
    return SIDIndex(np.stack([perm // 10, (perm // 2) % 5, perm % 2], 1))


@pytest.mark.parametrize('loss', ['softmax', 'bpr'])
def test_mf_learns_and_scores_unseen_users(loss):
    torch.set_num_threads(1)
    data = planted_data(n_users=150, n_items=40, seed=4)
    model, hist = train_mf(data, MFConfig.tiny().replace(loss=loss, epochs=15, patience=5))
    ranked = seq_ranking(model, data, 'test', k=40)
    assert count_duplicates(ranked) == 0 and count_invalid(ranked, 40) == 0
    pop = evaluate_popularity(data, 'test', k=40, ks=(10,))
    assert rank_metrics(ranked, data.splits['test'].target.values, ks=(10,))['HR@10'] > pop.metrics['HR@10'] + 0.1
    assert hist['valid_NDCG@10'].notna().all() and hist['loss'].iloc[-1] < hist['loss'].iloc[0]
    # item-based: a history of items never seen together (a user without train rows) still gets a ranking from its items
    x = torch.tensor([[3, 7, 0]])
    h = model(x)[0, 1]
    torch.testing.assert_close(h[:-1], (model.item_emb.weight[3] + model.item_emb.weight[7]) / 2)
    with pytest.raises(ValueError, match="'softmax' or 'bpr'"): seq_loss(model, model(x), torch.tensor([[1, -100, -100]]), 'hinge')


def test_tiger_learns_planted_pattern_with_valid_selection():
    from minionerec.tiger import TIGERConfig, train_tiger, tiger_ranking, evaluate_tiger
    torch.set_num_threads(1)
    data = planted_data(n_users=150, n_items=40, seed=5)
    index = random_index(40, seed=5)
    cfg = TIGERConfig.tiny().replace(epochs=16, patience=4)
    tiger, hist = train_tiger(data, index, cfg)
    res = evaluate_tiger(tiger, data, 'test', num_beams=20, ks=(1, 10, 20))
    pop = evaluate_popularity(data, 'test', k=20, ks=(10,))
    assert res.metrics['HR@10'] > pop.metrics['HR@10'] + 0.25 and res.metrics['NDCG@10'] > 2 * pop.metrics['NDCG@10'], (res, pop)
    assert (res.n_invalid, res.n_duplicates, res.n_empty) == (0, 0, 0)
    assert ((res.ranked >= 0) & (res.ranked < 40)).all()
    # the kept model is the best validation epoch
    v = hist['valid_NDCG@10'].dropna()
    assert len(v) >= 2 and len(hist) <= cfg.epochs
    from minionerec.evaluate import select_rows
    vrows = select_rows(len(data.splits['valid']), cfg.valid_max_users, cfg.seed)
    again = rank_metrics(tiger_ranking(tiger, data, 'valid', cfg.valid_beams, vrows), data.splits['valid'].target.values[vrows], ks=(10,))
    assert again['NDCG@10'] == pytest.approx(v.max(), abs=1e-9)


def test_tiger_inputs_and_config_errors():
    from minionerec.tiger import TIGERConfig, tiger_examples, encode_examples, sid_tokenizer, history_prompts, train_tiger, build_tiger
    df = pd.DataFrame({'user_id': ['u', 'u'], 'history': [[1, 2], [1, 2, 3]], 'target': [3, 4]})
    assert tiger_examples(df, 'row') == ([[1, 2], [1, 2, 3]], [3, 4])
    assert tiger_examples(df, 'prefix') == ([[1], [1, 2], [1, 2, 3]], [2, 3, 4])    # duplicates within a user dropped
    index = random_index(10)
    tok = sid_tokenizer(index)
    x, am, lab = encode_examples([[0, 1, 2]] * 2 + [[9] * 12], [3, 4, 5], index, tok, max_hist=10)
    assert x.shape == (3, 30) and am[2].sum() == 30                                   # only the last 10 items are read
    assert tok.convert_ids_to_tokens(x[0, :3].tolist()) == index.tokens(0)          # oldest first
    assert (lab[:, :3] >= 3).all() and (lab[:, 3] == tok.eos_token_id).all()
    assert history_prompts([[4, 5]], index, max_hist=1) == [index.sid(5)]
    # the recency of every token's item, right- or left-padded: 0 = the last item
    model = build_tiger(TIGERConfig.tiny(), tok, index)
    assert model.item_recency(x[:1, :9]).tolist() == [[2, 2, 2, 1, 1, 1, 0, 0, 0]]
    left = torch.cat([torch.zeros(1, 2, dtype=torch.long), x[:1, :6]], 1)
    assert model.item_recency(left)[:, 2:].tolist() == [[1, 1, 1, 0, 0, 0]]                 # (padding: masked anyway)
    with pytest.raises(ValueError, match='no recency embedding'): build_tiger(TIGERConfig.paper(), tok, index).item_recency(x)
    for bad in (dict(valid_metric='NDCG@50', valid_beams=20), dict(valid_metric='MRR'), dict(dropout=1.0), dict(valid_max_users=0)):
        with pytest.raises(ConfigError): TIGERConfig(**bad)
    with pytest.raises(ValueError, match='SID index has 10 items'): train_tiger(planted_data(n_users=5, n_items=12), index, TIGERConfig.tiny())


def test_compare_baselines_on_given_rows_with_tiger_and_mf(tmp_path):
    from minionerec.tiger import TIGERConfig
    torch.set_num_threads(1)
    data = planted_data(n_users=60, n_items=30, seed=6)
    rows = np.array([1, 4, 9, 30, 59])
    res = compare_baselines(data, tmp_path, sasrec=SASRecConfig.tiny().replace(epochs=1), gru4rec=False, k=30, ks=(5, 10),
                            mf=MFConfig.tiny().replace(epochs=1), tiger=TIGERConfig.tiny().replace(epochs=1), index=random_index(30, 6),
                            rows=rows, tiger_beams=12, hstu=HSTUConfig.tiny().replace(epochs=1))
    assert list(res) == ['Popularity', 'MF', 'SASRec', 'HSTU', 'TIGER']
    js = json.loads((tmp_path/'metrics.json').read_text())
    for name in ('MF', 'SASRec', 'HSTU', 'TIGER'):            # training and ranking seconds reported apart, summing to `seconds`
        m = js[name]
        assert m['train_s'] > 0 and m['rank_s'] is not None and m['rank_s'] >= 0 and abs(m['seconds'] - m['train_s'] - m['rank_s']) < 0.01, (name, m)
    for name, r in res.items():
        assert r.rows.tolist() == rows.tolist() and js[name]['rows'] == 5 and js[name]['invalid'] == 0 and js[name]['duplicates'] == 0
        assert r.targets.tolist() == data.splits['test'].target.values[rows].tolist()
    assert js['TIGER']['list_len'] == 12 and js['MF']['list_len'] == 30
    assert len(res['TIGER'].train_history) == 1 and len(res['MF'].train_history) == 1 and len(res['HSTU'].train_history) == 1
    with pytest.raises(ValueError, match='needs the SID index'):
        compare_baselines(data, None, sasrec=False, gru4rec=False, tiger=TIGERConfig.tiny())


def test_hstu_is_causal_and_learns_planted_pattern():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = HSTULayer(hidden=8, heads=2, max_len=6, dropout=0.0).eval()
    with torch.no_grad(): layer.rab.normal_()
    x = torch.randn(2, 6, 8)
    x2 = x.clone(); x2[:, 4:] += 1.0
    assert layer(x).shape == (2, 6, 8)
    torch.testing.assert_close(layer(x2)[:, :4], layer(x)[:, :4])           # output at t ignores the items after t
    assert (layer(x2)[:, 4:] - layer(x)[:, 4:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match='max_len 6'): layer(torch.randn(1, 7, 8))
    data = planted_data(n_users=150, n_items=40, seed=7)
    model, hist = train_hstu(data, HSTUConfig.tiny())
    assert isinstance(model, HSTU) and hist['loss'].iloc[-1] < hist['loss'].iloc[0]
    ranked = hstu_ranking(model, data, 'test', k=40)
    assert ranked.shape == (150, 40) and count_duplicates(ranked) == 0 and count_invalid(ranked, 40) == 0
    pop = evaluate_popularity(data, 'test', k=40, ks=(10,))
    m = rank_metrics(ranked, data.splits['test'].target.values, ks=(1, 10))
    assert m['HR@10'] > pop.metrics['HR@10'] + 0.3 and m['HR@1'] > 0.5, (m, pop.metrics)
    for bad in (dict(temperature=0.0), dict(hidden=30, heads=4), dict(dropout=1.0), dict(epochs=0), dict(valid_metric='AUC')):
        with pytest.raises(ConfigError, match='HSTUConfig'): HSTUConfig(**bad)


def test_tiger_trains_by_steps_with_inverse_sqrt_schedule():
    from minionerec.tiger import TIGERConfig, train_tiger, tiger_schedule
    torch.set_num_threads(1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sch = tiger_schedule(opt, TIGERConfig(schedule='inverse_sqrt', warmup_steps=10), 1000)
    lrs = []
    for _ in range(41): lrs.append(sch.get_last_lr()[0]); opt.step(); sch.step()
    assert lrs[5] == pytest.approx(5e-4) and lrs[10] == pytest.approx(1e-3) and lrs[40] == pytest.approx(5e-4)
    data = planted_data(n_users=40, n_items=20, seed=8)
    cfg = TIGERConfig.tiny().replace(schedule='inverse_sqrt', warmup_steps=3, max_steps=12, eval_steps=5, patience=5)
    tiger, hist = train_tiger(data, random_index(20, 8), cfg)
    assert hist['step'].tolist() == [5, 10, 12] and hist['valid_NDCG@10'].notna().all()   # a validation per 5 steps and at the end
    assert hist['lr'].iloc[-1] == pytest.approx(cfg.lr * math.sqrt(3 / 12))
    for bad in (dict(max_steps=-1), dict(eval_steps=-1), dict(warmup_steps=-1), dict(schedule='linear')):
        with pytest.raises(ConfigError): TIGERConfig(**bad)


def test_tiger_grouped_decoder_gives_the_hf_lists():
    "TIGER's own beam decoder (cross-attention shared by a user's beams) returns the Hugging Face cache path's and `generate`'s lists."
    from minionerec.tiger import TIGERConfig, train_tiger, history_prompts
    from minionerec.decoding import sid_beam_search, constrained_generate
    torch.set_num_threads(1)
    data = planted_data(n_users=40, n_items=20, seed=9)
    tiger, _ = train_tiger(data, random_index(20, 9), TIGERConfig.tiny().replace(layers=2, epochs=2, eval_every=2))
    prompts = history_prompts(data.splits['test']['history'][:12], tiger.index)      # histories of 10 items and shorter
    m, tok, trie = tiger.model, tiger.tokenizer, tiger.trie
    for B, bs in ((8, 5), (30, 12)):                                                  # 30 beams > 20 items: empty slots
        fast = sid_beam_search(m, tok, prompts, trie, num_beams=B, batch_size=bs)
        m.beam_start = None
        try: slow = sid_beam_search(m, tok, prompts, trie, num_beams=B, batch_size=bs)
        finally: del m.beam_start
        assert torch.equal(fast.items, slow.items) and torch.allclose(fast.scores, slow.scores, atol=1e-5)
        assert torch.equal(fast.items, constrained_generate(m, tok, prompts, trie, num_beams=B, batch_size=4).items)
    assert (fast.items[:, 20:] == -1).all() and fast.n_duplicates() == 0
