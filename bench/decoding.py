"""Constrained decoding benchmark: ms per user for four decoders on the same model and the same test prompts.

  unconstrained  `generate` beam search, no constraint (the floor for the processor)
  per-beam dict  `generate` + a faithful copy of the reference processor (DESIGN.md section 2): a Python dict from the
                 '-'-joined ids generated so far (the response header's ids at step 0, found by a hidden step counter)
                 to the allowed next ids, looked up row by row of the (batch x beams) score matrix on the host
  (a) processor  `generate` + `SIDConstraintProcessor` (vectorized trie lookups)
  (b) sid beam   `sid_beam_search` (prompt encoded once per user, KV cache expanded to the beams)

at B=16 and B=50, for a tiny and a ~25M-parameter Qwen2 backbone (random weights: the timings depend on shapes, not on
training), and with the vocabulary padded to Qwen's 151,936 tokens. Prompts are the real Industrial test rows when
../shared/data is present (else a synthetic catalogue). Checks that (a), (b) and the per-beam baseline return the same
items. Run:  OMP_WAIT_POLICY=PASSIVE python bench/decoding.py --quick
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM
from minionerec.sid import SIDIndex
from minionerec.decoding import (SIDTrie, SIDConstraintProcessor, BeamOutput, beam_generation_config, plain_generation_defaults,
                                 encode_prompts, sid_beam_search, _clean, _cat)

QWEN_VOCAB = 151_936
HEADER = '\n### Response:\n'

class PerBeamDictProcessor(LogitsProcessor):
    "The reference approach, kept faithful: per-row host lookups in a dict of '-'-joined prefixes, a hidden step counter."
    def __init__(self, hash_dict:dict, prefix_index:int, num_beams:int):
        self.d, self.prefix_index, self.num_beams, self.count = hash_dict, prefix_index, num_beams, 0
    def __call__(self, input_ids, scores):
        scores = F.log_softmax(scores, dim=-1)
        mask = torch.full_like(scores, -1000000)
        for batch_id, beam_sent in enumerate(input_ids.view(-1, self.num_beams, input_ids.shape[-1])):
            for beam_id, sent in enumerate(beam_sent):
                hash_key = sent[-self.prefix_index:] if self.count == 0 else sent[-self.count:]
                allowed = self.d.get('-'.join(str(t) for t in hash_key.tolist()), [])
                if len(allowed) == 0: continue
                mask[batch_id * self.num_beams + beam_id, allowed] = 0
        self.count += 1
        return scores + mask

def reference_dict(index, tokenizer, header_ids:list[int]) -> dict:
    "prefix key -> allowed next ids, built as the reference builds it (header ids stand for the empty prefix)."
    d = {}
    for i in range(index.n_items):
        ids = [tokenizer.convert_tokens_to_ids(t) for t in index.tokens(i)] + [tokenizer.eos_token_id]
        keys = ['-'.join(map(str, header_ids))] + ['-'.join(map(str, ids[:k])) for k in range(1, len(ids))]
        for k, nxt in zip(keys, ids): d.setdefault(k, set()).add(nxt)
    return {k: sorted(v) for k, v in d.items()}

@torch.no_grad()
def run_generate(model, tok, prompts, trie, B, batch_size, make_proc):
    "`generate` with our explicit config and the processor from `make_proc(prompt_width)` (None = unconstrained)."
    cfg = beam_generation_config(B, trie.n_steps, tok.eos_token_id, tok.pad_token_id)
    outs = []
    for s in range(0, len(prompts), batch_size):
        ids, am = encode_prompts(tok, prompts[s:s + batch_size])
        p = make_proc(ids.shape[1])
        with plain_generation_defaults(model):
            out = model.generate(input_ids=ids, attention_mask=am, generation_config=cfg, logits_processor=LogitsProcessorList([p] if p else []))
        items, scores, seq = _clean(trie, out.sequences[:, ids.shape[1]:], out.sequences_scores)
        n = ids.shape[0]
        outs.append(BeamOutput(items.view(n, B), scores.view(n, B), seq.view(n, B, -1)))
    return _cat(outs, trie.n_steps)

def load_prompts(n_users:int, seed:int=0):
    "(index, item texts, test prompts): real Industrial test rows when available, else a synthetic catalogue."
    rng = np.random.default_rng(seed)
    try:
        from minionerec.data import load_published
        data = load_published(os.environ.get('MINIONEREC_DATA') or Path(__file__).resolve().parents[2] / 'shared' / 'data')
        from minionerec.sid import build_sid_index
        index = build_sid_index(np.array([[int(t.split('_')[1][:-1]) for t in data.sids[i]] for i in range(len(data.items))]))
        try:
            from minionerec.tasks import rec_examples
            exs = rec_examples(data, index, 'test'); prompts = [e['prompt'] for e in exs]; src = 'tasks.rec_examples'
        except ImportError:
            df = data.splits['test']
            prompts = ['The user bought, in order: ' + ', '.join(index.sid(i) for i in h) + '. Which item next?' + HEADER for h in df['history']]
            src = 'own prompt (tasks not exported)'
        texts = list(data.items['title'].astype(str))
        pick = rng.choice(len(prompts), size=min(n_users, len(prompts)), replace=False)
        return index, texts, [prompts[i] for i in pick], f'Industrial test rows ({src}), {index.n_items} items'
    except Exception as e:  # no data: synthetic catalogue of 3,000 items, 3 x 256 codes
        codes = np.unique(rng.integers(0, 256, (3000, 3)), axis=0)
        index = SIDIndex(codes)
        prompts = ['The user bought, in order: ' + ', '.join(index.sid(i) for i in rng.integers(0, index.n_items, rng.integers(1, 11))) +
                   '. Which item next?' + HEADER for _ in range(n_users)]
        return index, ['item title number %d' % i for i in range(200)], prompts, f'synthetic ({type(e).__name__}: {e})'

def make_tokenizer(texts, index):
    try:
        from minionerec.model import train_bpe_tokenizer
        tok = train_bpe_tokenizer(texts + [HEADER] * 50, vocab_size=2000)
    except Exception:
        from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
        from transformers import PreTrainedTokenizerFast
        tk = Tokenizer(models.BPE(unk_token='<unk>')); tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tk.decoder = decoders.ByteLevel()
        tk.train_from_iterator(texts + [HEADER] * 50, trainers.BpeTrainer(vocab_size=2000, special_tokens=['<pad>', '<eos>', '<unk>'], show_progress=False,
                                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>', eos_token='<eos>', unk_token='<unk>')
    tok.add_tokens(index.vocab())
    return tok

def make_model(tok, size:str, vocab:int|None=None, seed:int=0):
    torch.manual_seed(seed)
    dims = dict(tiny=(64, 2, 4, 2, 128, 0.2), m25=(512, 7, 8, 4, 1536, 0.05))[size]
    h, L, nh, kv, ff, init = dims
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=h, num_hidden_layers=L, num_attention_heads=nh, num_key_value_heads=kv,
                      intermediate_size=ff, max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=init,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg).eval()
    if vocab: model.resize_token_embeddings(vocab, mean_resizing=False)
    return model

def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--users', type=int, default=16, help='test prompts (users) per configuration')
    ap.add_argument('--quick', action='store_true', help='a short run: the 25M model on a quarter of the users and not at the Qwen vocabulary')
    ap.add_argument('--beams', type=int, nargs='+', default=[16, 50])
    ap.add_argument('--batch-size', type=int, default=8, help='users per batch, the same for every decoder')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--configs', nargs='+', default=None, choices=['tiny', 'm25', 'tiny-qwen', 'm25-qwen'],
                    help='backbones to time (default: all four; --quick: tiny, m25 and tiny-qwen)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    index, texts, prompts, src = load_prompts(a.users)
    tok = make_tokenizer(texts, index)
    trie = SIDTrie.from_index(index, tok)
    ids, _ = encode_prompts(tok, prompts)
    header_ids = tok(HEADER, add_special_tokens=False)['input_ids']
    assert all(tok(p)['input_ids'][-len(header_ids):] == header_ids for p in prompts), 'header tokenizes differently in context'
    ref = reference_dict(index, tok, header_ids)
    print(f'prompts: {len(prompts)} users from {src}; prompt width {ids.shape[1]} tokens (left-padded); {trie}; threads={a.threads}')
    names = a.configs or (['tiny', 'm25', 'tiny-qwen'] if a.quick else ['tiny', 'm25', 'tiny-qwen', 'm25-qwen'])
    configs = [(n.split('-')[0], QWEN_VOCAB if n.endswith('qwen') else None) for n in names]
    rows, ok_all = [], True
    for size, vocab in configs:
        model = make_model(tok, size, vocab)
        n_par = sum(p.numel() for p in model.parameters()) / 1e6
        users = prompts if size == 'tiny' or not a.quick else prompts[:max(1, len(prompts) // 4)]
        for B in a.beams:
            bs = a.batch_size
            decoders = {
                'unconstrained': lambda ps: run_generate(model, tok, ps, trie, B, bs, lambda w: None),
                'per-beam dict': lambda ps: run_generate(model, tok, ps, trie, B, bs, lambda w: PerBeamDictProcessor(ref, len(header_ids), B)),
                '(a) processor': lambda ps: run_generate(model, tok, ps, trie, B, bs, lambda w: SIDConstraintProcessor(trie, w)),
                '(b) sid beam': lambda ps: sid_beam_search(model, tok, ps, trie, num_beams=B, batch_size=bs)}
            for k, f in decoders.items():                                  # warm-up (the 25M model: ours only, it is slow)
                if size == 'tiny' or k == '(b) sid beam': f(users[:1])
            # interleave the decoders batch by batch, so that load from other processes falls on all of them alike
            outs, secs = {k: [] for k in decoders}, {k: 0.0 for k in decoders}
            for s in range(0, len(users), bs):
                for k, f in decoders.items():
                    o, t = timed(lambda: f(users[s:s + bs])); outs[k].append(o); secs[k] += t
            res = {k: (_cat(outs[k], trie.n_steps), secs[k]) for k in decoders}
            base, floor = res['per-beam dict'], res['unconstrained']
            same_b = torch.equal(res['(b) sid beam'][0].items, base[0].items)
            same_a = torch.equal(res['(a) processor'][0].items, base[0].items)
            ok_all &= same_a and same_b
            for name, (out, sec) in res.items():
                rows.append(dict(model=f'{size} ({n_par:.1f}M)', vocab=len(tok) if vocab is None else vocab, B=B, decoder=name,
                                 ms_per_user=1000 * sec / len(users), users=len(users), vs_per_beam=base[1] / sec, vs_unconstrained=sec / floor[1],
                                 same_as_per_beam=('-' if name in ('unconstrained', 'per-beam dict') else
                                                   str(same_a if name.startswith('(a)') else same_b)),
                                 invalid=int((out.items < 0).sum()) if name != 'unconstrained' else '-'))
                r = rows[-1]
                print(f"{r['model']:>14} V={r['vocab']:>6} B={B:>2} U={len(users):>2} {name:<14} {r['ms_per_user']:9.1f} ms/user  "
                      f"speed-up vs per-beam {r['vs_per_beam']:5.2f}x  time vs unconstrained {r['vs_unconstrained']:5.2f}x  "
                      f"same items as per-beam: {r['same_as_per_beam']}  invalid: {r['invalid']}", flush=True)
        del model
    print('\nsummary (ms per user; (b) speed-up over the per-beam processor; (a) time over unconstrained generate)')
    for size, vocab in configs:
        for B in a.beams:
            sel = {r['decoder']: r for r in rows if r['model'].startswith(size) and r['B'] == B and (r['vocab'] == QWEN_VOCAB) == (vocab == QWEN_VOCAB)}
            print(f"  {size:>4} V={'qwen' if vocab else 'small':>5} B={B:>2}: unconstrained {sel['unconstrained']['ms_per_user']:8.1f} | "
                  f"per-beam {sel['per-beam dict']['ms_per_user']:8.1f} | (a) {sel['(a) processor']['ms_per_user']:8.1f} "
                  f"({sel['(a) processor']['vs_unconstrained']:.2f}x unconstrained) | (b) {sel['(b) sid beam']['ms_per_user']:8.1f} "
                  f"({sel['(b) sid beam']['vs_per_beam']:.1f}x faster than per-beam)")
    print('identical items (a) = (b) = per-beam everywhere:', ok_all)
    return rows

if __name__ == '__main__':
    main()
