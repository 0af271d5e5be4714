"""Embeddings (02_embed), RQ-VAE (03_rqvae) and RQ-KMeans (03a_rqkmeans): caches, pooling, quantizer invariants, real data."""
import json
import numpy as np
import pandas as pd
import pytest
import torch

from minionerec import embed
from minionerec.embed import EmbedConfig, item_texts, encode_items, embedding_cache_path, mean_pool, last_token_pool, resolve_model, MINILM
from minionerec.rqvae import (QuantizeResult, RQVAE, RQVAEConfig, ResidualQuantizer, train_rqvae, collision_rate,
                              n_colliding_items, code_usage, perplexity)
from minionerec.rqkmeans import RQKMeansConfig, train_rqkmeans, balanced_assign

torch.set_num_threads(2)

def blobs(n=300, d=24, k=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, d)); x = c[rng.integers(k, size=n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

ITEMS = pd.DataFrame({'item_id': [0, 1, 2], 'title': ['Staples', '', ''], 'description': ["['Heavy', 'duty']", 'Gloves', ''],
                      'brand': ['', '', ''], 'categories': [[], [], []]})

# ---------------------------------------------------------------- embeddings
def test_item_texts_never_empty_and_capped():
    df = pd.concat([ITEMS, pd.DataFrame({'item_id': [3], 'title': ['T' * 50], 'description': ['word ' * 500],
                                         'brand': [''], 'categories': [[]]})], ignore_index=True)
    texts = item_texts(df, max_chars=120)
    assert texts[:3] == ['Staples. Heavy duty', 'Gloves', 'item 2']
    assert all(t.strip() for t in texts) and all(len(t) <= 120 for t in texts)

def test_encode_cache_hits_and_misses(tmp_path, monkeypatch):
    calls = []
    def fake(texts, cfg):
        calls.append(list(texts))
        return np.stack([np.frombuffer(t.ljust(8)[:8].encode(), dtype=np.uint8).astype(np.float32) for t in texts])
    monkeypatch.setattr(embed, '_encode_texts', fake)
    cfg = EmbedConfig.tiny()
    a = encode_items(ITEMS, cfg, cache=tmp_path)
    b = encode_items(ITEMS, cfg, cache=tmp_path)
    assert len(calls) == 1 and np.array_equal(a, b) and a.dtype == np.float32
    changed = ITEMS.copy(); changed.loc[1, 'description'] = 'Gloves, nitrile'
    encode_items(changed, cfg, cache=tmp_path); assert len(calls) == 2           # a changed text misses
    encode_items(ITEMS, cfg.replace(max_length=32), cache=tmp_path); assert len(calls) == 3   # a changed model setting misses
    assert embedding_cache_path(item_texts(ITEMS, cfg.max_chars), cfg, tmp_path).exists()
    assert not list(tmp_path.glob('.*.tmp'))

def test_pooling_ignores_padding():
    h = torch.randn(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(h, right)[0], h[0, :3].mean(0))
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(last_token_pool(h, left), h[:, 4])
    torch.testing.assert_close(last_token_pool(h, right)[0], h[0, 2])

def test_hf_encoder_branch_padding_invariant(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel
    tok = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp_path/'enc')
    tok.save_pretrained(tmp_path/'enc')
    cfg = EmbedConfig(model=str(tmp_path/'enc'), pooling='mean', batch_size=4, max_length=48, device='cpu')
    texts = ['a', 'a long long text about many different staples and gloves for the lab']
    both, alone = embed._encode_texts(texts, cfg), embed._encode_texts(texts[:1], cfg)
    assert both.shape == (2, 16)
    np.testing.assert_allclose(both[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1, atol=1e-5)

# ---------------------------------------------------------------- RQ-VAE
def test_residual_decomposition_and_ste():
    torch.manual_seed(0)
    rq = ResidualQuantizer(codebook_sizes=[5, 5, 5], dim=4)
    z = torch.randn(20, 4, requires_grad=True)
    rq.init_kmeans(z, niter=5)
    o = rq(z)
    torch.testing.assert_close(rq.vectors(o.codes) + o.residuals[:, -1], z.detach(), atol=1e-5, rtol=0)
    o.zq.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    assert o.loss.item() > 0

def test_train_rqvae_tiny():
    emb = blobs()
    res = train_rqvae(emb, RQVAEConfig.tiny())
    assert isinstance(res, QuantizeResult) and res.codes.shape == (300, 3) and res.codes.dtype == np.int64
    assert res.last_dists.shape == (300, 16) and res.last_dists.dtype == np.float32
    assert (res.last_dists.argmin(1) == res.codes[:, -1]).all()
    assert res.history.recon_loss.iloc[-1] < res.history.recon_loss.iloc[0]
    assert {'collision_rate', 'used_l1', 'ppl_l3'} <= set(res.history.columns)
    codes, _ = res.model.encode(torch.as_tensor(emb))
    assert (codes.numpy() == res.codes).all()
    again = train_rqvae(emb, RQVAEConfig.tiny())
    assert (again.codes == res.codes).all()

def test_code_stats():
    c = np.array([[0, 0], [0, 0], [1, 0]])
    assert collision_rate(c) == pytest.approx(1 / 3) and n_colliding_items(c) == 2
    assert perplexity(code_usage(c[:, 0], 4)) == pytest.approx(np.exp(-(2/3*np.log(2/3) + 1/3*np.log(1/3))))

# ---------------------------------------------------------------- RQ-KMeans
def test_balanced_assign_capacity_and_optimal_when_free():
    rng = np.random.default_rng(1)
    d = rng.random((500, 32))
    a = balanced_assign(d)
    assert np.bincount(a, minlength=32).max() == 16 and (a >= 0).all()
    assert (balanced_assign(d, capacity=500) == d.argmin(1)).all()   # no binding capacity: plain nearest code

def test_rqkmeans_plain_and_balanced():
    emb = blobs(600)
    plain = train_rqkmeans(emb, RQKMeansConfig.tiny())
    bal = train_rqkmeans(emb, RQKMeansConfig.tiny().replace(balanced=True))
    assert (plain.last_dists.argmin(1) == plain.codes[:, -1]).all()
    assert code_usage(bal.codes, 16).max() <= 38 and (bal.history.used == 16).all()
    assert (train_rqkmeans(emb, RQKMeansConfig.tiny()).codes == plain.codes).all()
    with pytest.raises(ValueError, match='items < codebook_size'): train_rqkmeans(emb[:10], RQKMeansConfig.tiny())

# ---------------------------------------------------------------- real data (skipped when absent)
def test_industrial_reduced(amazon_root, tmp_path):
    "400 Industrial items: MiniLM embeddings (cached), RQ-VAE and RQ-KMeans with 3 x 256 codes."
    items = pd.DataFrame.from_dict(json.loads((amazon_root/'Amazon/index/Industrial_and_Scientific.item.json').read_text()),
                                   orient='index').iloc[:400]
    E = encode_items(items, EmbedConfig(batch_size=32, max_length=128), cache=tmp_path)
    assert E.shape == (400, 384) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-4)
    assert np.array_equal(encode_items(items, EmbedConfig(batch_size=32, max_length=128), cache=tmp_path), E)
    vae = train_rqvae(E, RQVAEConfig.cpu().replace(epochs=30, log_every=10))
    assert vae.codes.shape == (400, 3) and vae.codes.max() < 256
    assert vae.history.recon_loss.iloc[-1] < vae.history.recon_loss.iloc[0]
    plain = train_rqkmeans(E, RQKMeansConfig(niter=10, n_threads=2))
    bal = train_rqkmeans(E, RQKMeansConfig(niter=10, balanced=True, balance_iters=3, n_threads=2))
    assert code_usage(bal.codes, 256).max() <= 2                        # ceil(400 / 256)
    for r in (vae, plain, bal):
        assert collision_rate(r.codes) < 0.5
        # items sharing a level-1 code are more similar than random pairs
        same = r.codes[:, None, 0] == r.codes[None, :, 0]; np.fill_diagonal(same, False)
        S = E @ E.T
        assert S[same].mean() > S[~same].mean() + 0.05
