"""Constrained decoding: path (a) `generate` + processor and path (b) SID beam search agree, are deterministic whatever
the checkpoint's generation_config says, and only ever return distinct real items."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, AutoModelForCausalLM
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders

from minionerec.sid import SIDIndex
from minionerec.decoding import (SIDTrie, SIDConstraintProcessor, BeamOutput, sid_beam_search, constrained_generate,
                                 recommend, beam_generation_config, items_from_text, encode_prompts)

torch.set_num_threads(2)
HEADER = '\n### Response:\n'

def bpe_tokenizer(texts, sid_tokens):
    tk = Tokenizer(models.BPE(unk_token='<unk>'))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=['<pad>', '<eos>', '<unk>'], show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>', eos_token='<eos>', unk_token='<unk>')
    tok.add_tokens(list(sid_tokens))
    return tok

def word_tokenizer(texts, extra):
    "Whitespace word-level tokenizer: no merges, a different id layout and header length than the BPE one."
    words = sorted({w for t in texts for w in t.split()})
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(['<unk>', '<eos>', '<pad>'] + words)}, unk_token='<unk>'))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>', eos_token='<eos>', unk_token='<unk>')
    tok.add_tokens(list(extra))
    return tok

def prompts_for(index, rng, n, header=HEADER, hist=(1, 3)):
    ps, ts = [], []
    for _ in range(n):
        h = rng.integers(0, index.n_items, rng.integers(*hist)).tolist()
        ps.append('Bought ' + ', '.join(index.sid(i) for i in h) + header)
        ts.append(int(rng.zipf(1.5) * (len(h) * 5 + 1)) % index.n_items)
    return ps, ts

def trained(index, tok, steps=80, seed=0, header=HEADER):
    torch.manual_seed(seed); rng = np.random.default_rng(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg); opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        ps, ts = prompts_for(index, rng, 16, header)
        enc = tok([p + ' ' * (not p.endswith('\n')) + ' '.join(index.tokens(t)) + ' ' + tok.eos_token for p, t in zip(ps, ts)],
                  return_tensors='pt', padding=True, padding_side='right')
        lab = enc['input_ids'].masked_fill(enc['attention_mask'] == 0, -100)
        for r, p in enumerate(ps): lab[r, :len(tok(p)['input_ids'])] = -100
        loss = model(**enc, labels=lab).loss; opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

def mixed_index(seed=0):
    "3-level items plus a few with a 4th level, one of which extends a complete 3-level item (EOS and a child at one node)."
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, 5, (70, 3)), axis=0); rng.shuffle(codes)
    codes = np.concatenate([codes, -np.ones((len(codes), 1), dtype=codes.dtype)], 1)
    extra = codes[:4].copy(); extra[:, 3] = [0, 1, 2, 0]; extra[3, :3] = codes[4, :3]   # siblings of items 0-3 at level d
    codes[:3, 3] = 3                                                                     # items 0-2 get a 4th level too
    return SIDIndex(np.concatenate([codes, extra]))

@pytest.fixture(scope='module')
def setup():
    index = mixed_index()
    tok = bpe_tokenizer(['Bought things, more things. What next?' + HEADER] * 20, index.vocab())
    trie = SIDTrie.from_index(index, tok)
    return index, tok, trie, trained(index, tok)

def test_trie_covers_every_item_and_only_items(setup):
    index, tok, trie, _ = setup
    assert trie.max_len == 4 and trie.n_items == index.n_items
    ids = [[tok.convert_tokens_to_ids(t) for t in index.tokens(i)] for i in range(index.n_items)]
    seq = torch.tensor([s + [tok.eos_token_id] * (5 - len(s)) for s in ids])
    assert trie.items_of(seq).tolist() == list(range(index.n_items))
    assert (trie.items_of(seq[:, :3]) == -1).all()                       # unfinished SIDs are not items
    # a node that both ends an item and continues another allows EOS and a 4th-level token
    kids = set(trie.allowed(trie.walk(seq[4:5, :3]))[0][0].tolist())
    assert tok.eos_token_id in kids and tok.convert_tokens_to_ids('<d_0>') in kids

def test_paths_agree_on_trained_model(setup):
    index, tok, trie, model = setup
    prompts, _ = prompts_for(index, np.random.default_rng(1), 10)
    a = constrained_generate(model, tok, prompts, trie, num_beams=16, batch_size=4)
    b = sid_beam_search(model, tok, prompts, trie, num_beams=16, batch_size=3)
    assert torch.equal(a.items, b.items)
    assert torch.allclose(a.scores, b.scores, atol=1e-4)
    assert torch.equal(a.sequences, b.sequences)
    assert (b.items >= 0).all() and b.n_duplicates() == 0 and b.n_invalid() == 0
    assert (b.scores[:, :-1] >= b.scores[:, 1:]).all()
    # a deeper item can be in the lists (mixed depths are searched, not truncated)
    assert (b.sequences[..., 3] != tok.eos_token_id).any()

def test_deterministic_despite_sampling_generation_config(setup, tmp_path):
    index, tok, trie, model = setup
    prompts, _ = prompts_for(index, np.random.default_rng(2), 5)
    ref_a = constrained_generate(model, tok, prompts, trie, num_beams=8)
    ref_b = sid_beam_search(model, tok, prompts, trie, num_beams=8)
    model.generation_config = GenerationConfig(do_sample=True, top_k=5, top_p=0.8, temperature=2.0, repetition_penalty=1.5,
                                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    model.generation_config = GenerationConfig()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    gc = loaded.generation_config
    assert gc.do_sample and gc.top_k == 5 and gc.repetition_penalty == 1.5 and gc.temperature == 2.0   # the trap is armed
    for seed in (0, 1):
        torch.manual_seed(seed)
        a = constrained_generate(loaded, tok, prompts, trie, num_beams=8)
        b = sid_beam_search(loaded, tok, prompts, trie, num_beams=8)
        assert torch.equal(a.items, ref_a.items) and torch.equal(b.items, ref_b.items) and torch.equal(a.items, b.items)
        assert torch.allclose(a.scores, ref_a.scores, atol=1e-5)
    assert loaded.generation_config.do_sample                             # restored after the call
    # the explicit config itself names every sampling knob as neutral
    cfg = beam_generation_config(8, trie.n_steps, tok.eos_token_id, tok.pad_token_id)
    assert (cfg.do_sample, cfg.temperature, cfg.top_p, cfg.repetition_penalty, cfg.length_penalty) == (False, 1.0, 1.0, 1.0, 0.0)

@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), B=st.sampled_from([1, 5, 16, 40]), bs=st.integers(1, 6))
def test_every_output_is_a_distinct_real_item(setup, seed, B, bs):
    index, tok, trie, model = setup
    prompts, _ = prompts_for(index, np.random.default_rng(seed), 6, hist=(1, 8))
    out = sid_beam_search(model, tok, prompts, trie, num_beams=B, batch_size=bs)
    assert out.items.shape == (6, B) and out.items.dtype == torch.int64
    assert ((out.items >= 0) & (out.items < index.n_items)).all() and out.n_duplicates() == 0
    # the decoded tokens spell the returned items
    dec = items_from_text([tok.decode([t for t in s.tolist() if t >= 0]) for s in out.sequences.reshape(-1, out.sequences.shape[-1])], index)
    assert dec == out.items.reshape(-1).tolist()
    # chunking users differently changes nothing
    one = sid_beam_search(model, tok, prompts, trie, num_beams=B, batch_size=6)
    assert torch.equal(one.items, out.items) and torch.allclose(one.scores, out.scores, atol=1e-4)

def test_fewer_items_than_beams(setup):
    index, tok, _, model = setup
    small = SIDIndex(index.codes[[5, 6, 7]])
    trie = SIDTrie.from_index(small, tok)
    prompts, _ = prompts_for(index, np.random.default_rng(3), 3)
    a = recommend(model, tok, prompts, small, num_beams=6, method='generate', trie=trie)
    b = recommend(model, tok, prompts, small, num_beams=6, method='beam', trie=trie)
    assert torch.equal(a.items, b.items)
    assert sorted(b.items[0, :3].tolist()) == [0, 1, 2] and (b.items[:, 3:] == -1).all() and torch.isinf(b.scores[:, 3:]).all()
    assert b.n_invalid() == 9

def test_any_tokenizer_and_header():
    "A word-level tokenizer and a 4-word response header: nothing assumes a 3-token header."
    index = SIDIndex(np.unique(np.random.default_rng(4).integers(0, 4, (30, 3)), axis=0))
    header = ' ### Answer : here'
    tok = word_tokenizer(['Bought , ### Answer : here'], index.vocab())
    assert len(tok(header)['input_ids']) == 4
    trie = SIDTrie.from_index(index, tok)
    model = trained(index, tok, steps=40, header=header)
    prompts, _ = prompts_for(index, np.random.default_rng(5), 5, header=header)
    a = constrained_generate(model, tok, prompts, trie, num_beams=10)
    b = sid_beam_search(model, tok, prompts, trie, num_beams=10)
    assert torch.equal(a.items, b.items) and (b.items >= 0).all() and b.n_duplicates() == 0

def test_processor_detects_prompt_width(setup):
    index, tok, trie, model = setup
    prompts, _ = prompts_for(index, np.random.default_rng(6), 3)
    ids, am = encode_prompts(tok, prompts)
    cfg = beam_generation_config(4, trie.n_steps, tok.eos_token_id, tok.pad_token_id)
    outs = []
    for p in (SIDConstraintProcessor(trie), SIDConstraintProcessor(trie, ids.shape[1])):
        outs.append(model.generate(input_ids=ids, attention_mask=am, generation_config=cfg, logits_processor=[p]).sequences)
    assert torch.equal(outs[0], outs[1])
    assert (trie.items_of(outs[0][:, ids.shape[1]:]) >= 0).all()
    used = SIDConstraintProcessor(trie, ids.shape[1] + 2)
    with pytest.raises(ValueError, match='fewer than the prompt width'): used(ids, torch.zeros(3, len(tok)))

# --- encoder-decoder (T5, as TIGER uses): encoder once per user, decoder beams over the trie from the start token ---
def sid_tokenizer(index):
    from tokenizers import Regex
    vocab = {t: i for i, t in enumerate(['<pad>', '</s>', '<unk>'] + index.vocab())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r'<[^<>]*>|[^<>]+'), behavior='isolated')
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>', eos_token='</s>', unk_token='<unk>')

def sid_prompts(index, rng, n, hist=(1, 4)):
    ps, ts = [], []
    for _ in range(n):
        h = rng.integers(0, index.n_items, rng.integers(*hist)).tolist()
        ps.append(''.join(index.sid(i) for i in h)); ts.append(int(rng.zipf(1.5) * (len(h) * 5 + 1)) % index.n_items)
    return ps, ts

@pytest.fixture(scope='module')
def t5_setup():
    from transformers import T5Config, T5ForConditionalGeneration
    index = mixed_index(1)
    tok = sid_tokenizer(index)
    torch.manual_seed(0); rng = np.random.default_rng(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.0,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    model = T5ForConditionalGeneration(cfg); opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        ps, ts = sid_prompts(index, rng, 16)
        enc = tok(ps, return_tensors='pt', padding=True)
        lab = tok([index.sid(t) + tok.eos_token for t in ts], return_tensors='pt', padding=True)['input_ids']
        lab = lab.masked_fill(lab == tok.pad_token_id, -100)
        loss = model(**enc, labels=lab).loss; opt.zero_grad(); loss.backward(); opt.step()
    return index, tok, SIDTrie.from_index(index, tok), model.eval()

def test_encoder_decoder_paths_agree(t5_setup):
    index, tok, trie, model = t5_setup
    prompts, _ = sid_prompts(index, np.random.default_rng(1), 10, hist=(1, 9))
    a = constrained_generate(model, tok, prompts, trie, num_beams=16, batch_size=4)
    b = sid_beam_search(model, tok, prompts, trie, num_beams=16, batch_size=3)
    assert torch.equal(a.items, b.items) and torch.equal(a.sequences, b.sequences)
    assert torch.allclose(a.scores, b.scores, atol=1e-4)
    assert ((b.items >= 0) & (b.items < index.n_items)).all() and b.n_duplicates() == 0
    assert (b.scores[:, :-1] >= b.scores[:, 1:]).all()
    dec = items_from_text([tok.decode([t for t in s.tolist() if t >= 0]) for s in b.sequences.reshape(-1, b.sequences.shape[-1])], index)
    assert dec == b.items.reshape(-1).tolist()
    # a user's list does not depend on who else is in the batch (encoder padding is masked)
    one = sid_beam_search(model, tok, prompts[3:4], trie, num_beams=16)
    assert torch.equal(one.items[0], b.items[3]) and torch.allclose(one.scores[0], b.scores[3], atol=1e-4)

def test_encoder_decoder_deterministic_and_small_catalogue(t5_setup):
    index, tok, trie, model = t5_setup
    prompts, _ = sid_prompts(index, np.random.default_rng(2), 4)
    ref = sid_beam_search(model, tok, prompts, trie, num_beams=8)
    saved = model.generation_config
    model.generation_config = GenerationConfig(do_sample=True, top_k=3, temperature=3.0, decoder_start_token_id=tok.pad_token_id,
                                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    try:
        for seed in (0, 1):
            torch.manual_seed(seed)
            assert torch.equal(constrained_generate(model, tok, prompts, trie, num_beams=8).items, ref.items)
    finally: model.generation_config = saved
    small = SIDTrie.from_index(SIDIndex(index.codes[[5, 6, 7]]), tok)
    a = recommend(model, tok, prompts, None, num_beams=5, method='generate', trie=small)
    b = recommend(model, tok, prompts, None, num_beams=5, method='beam', trie=small)
    assert torch.equal(a.items, b.items) and (b.items[:, 3:] == -1).all() and sorted(b.items[0, :3].tolist()) == [0, 1, 2]
