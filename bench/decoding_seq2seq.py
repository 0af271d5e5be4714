"""Constrained decoding of an encoder-decoder (TIGER's T5): ms per user for `generate` + `SIDConstraintProcessor` (a) and
`sid_beam_search` (b) on the same model and histories, and whether they return the same items.

With --only-b it times (b) with TIGER's grouped decoder (`tiger.grouped_beam_start`, the default) against (b) through
the Hugging Face cache (cross-attention keys/values copied to every beam). The model is TIGER at the paper's size (`TIGERConfig.paper()`: 4+4 layers, d_model 128, 6 heads of 64, MLP 1024) or the
demo/CPU size, with random weights (timings depend on shapes, not on training). Histories are the real Industrial test
rows when ../shared/data (or $MINIONEREC_DATA) is present, else random histories over a synthetic 3 x 256 catalogue.
Users are sorted by history length before batching, as `TIGER.recommend` does. Run:
  OMP_WAIT_POLICY=PASSIVE python bench/decoding_seq2seq.py --users 64
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch
from minionerec.sid import SIDIndex, build_sid_index
from minionerec.decoding import constrained_generate, sid_beam_search
from minionerec.tiger import TIGER, TIGERConfig, history_prompts

SIZES = {'paper': TIGERConfig.paper(), 'cpu': TIGERConfig(d_model=128, layers=2, heads=4, d_kv=32, d_ff=512),
         'default': TIGERConfig(), 'demo': TIGERConfig(d_model=64, layers=2, heads=4, d_kv=16, d_ff=256)}

def load_histories(n:int, seed:int=0):
    rng = np.random.default_rng(seed)
    try:
        from minionerec.data import load_published
        data = load_published(os.environ.get('MINIONEREC_DATA') or Path(__file__).resolve().parents[2] / 'shared' / 'data')
        pub = SIDIndex.from_published(data)
        index = build_sid_index(pub.codes, codebook_sizes=pub.codebook_sizes)
        hs = data.splits['test']['history'].tolist()
        return index, [hs[i] for i in rng.choice(len(hs), size=min(n, len(hs)), replace=False)], f'Industrial test rows, {index.n_items} items'
    except Exception as e:
        index = SIDIndex(np.unique(rng.integers(0, 256, (3000, 3)), axis=0))
        return index, [rng.integers(0, index.n_items, rng.integers(1, 11)).tolist() for _ in range(n)], f'synthetic ({type(e).__name__})'

def _hf_cache(model, fn):
    "Run `fn` with the model's own decoder (`beam_start`) switched off: chapter 08's Hugging Face cache path."
    model.beam_start = None
    try: return fn()
    finally: del model.beam_start

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--users', type=int, default=64)
    ap.add_argument('--beams', type=int, nargs='+', default=[20, 50])
    ap.add_argument('--batch-size', type=int, default=32, help='users per batch, the same for both decoders')
    ap.add_argument('--sizes', nargs='+', default=['cpu', 'paper'], choices=list(SIZES))
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--only-b', action='store_true', help='time only (b) sid_beam_search (what TIGER.recommend runs)')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    index, hists, src = load_histories(a.users)
    print(f'{len(hists)} users from {src}; threads={a.threads}; batch {a.batch_size} users')
    ok_all = True
    for size in a.sizes:
        torch.manual_seed(0)
        tiger = TIGER.create(index, SIZES[size]); tiger.model.eval()
        prompts = history_prompts(hists, index, tiger.max_hist)
        prompts = [prompts[i] for i in np.argsort([len(p) for p in prompts], kind='stable')]
        n_par = sum(p.numel() for p in tiger.model.parameters()) / 1e6
        for B in a.beams:
            fns = {'(a) generate': lambda ps: constrained_generate(tiger.model, tiger.tokenizer, ps, tiger.trie, B, a.batch_size),
                   '(b) sid beam': lambda ps: sid_beam_search(tiger.model, tiger.tokenizer, ps, tiger.trie, B, a.batch_size)}
            if a.only_b:                                                       # (b) with and without TIGER's grouped decoder
                fns = {'(b) sid beam': fns['(b) sid beam'], '(b) HF cache': lambda ps: _hf_cache(tiger.model, lambda: sid_beam_search(
                    tiger.model, tiger.tokenizer, ps, tiger.trie, B, a.batch_size))}
            for f in fns.values(): f(prompts[:2])                              # warm-up
            outs, secs = {}, {}
            for k, f in fns.items():
                t = time.perf_counter(); outs[k] = f(prompts); secs[k] = time.perf_counter() - t
            if a.only_b:
                same = torch.equal(outs['(b) sid beam'].items, outs['(b) HF cache'].items)
                ok_all &= same
                print(f"{size:>7} ({n_par:.1f}M) B={B:>2}: (b) grouped {1000 * secs['(b) sid beam'] / len(prompts):8.1f} ms/user | "
                      f"(b) HF cache {1000 * secs['(b) HF cache'] / len(prompts):8.1f} ms/user | speed-up {secs['(b) HF cache'] / secs['(b) sid beam']:.1f}x | "
                      f"same items: {same} ({len(prompts)} users)", flush=True)
                continue
            same = torch.equal(outs['(a) generate'].items, outs['(b) sid beam'].items)
            ok_all &= same
            print(f"{size:>5} ({n_par:.1f}M) B={B:>2}: (a) generate {1000 * secs['(a) generate'] / len(prompts):8.1f} ms/user | "
                  f"(b) sid beam {1000 * secs['(b) sid beam'] / len(prompts):8.1f} ms/user | speed-up {secs['(a) generate'] / secs['(b) sid beam']:.1f}x | "
                  f"same items: {same} | invalid: {outs['(b) sid beam'].n_invalid()} duplicates: {outs['(b) sid beam'].n_duplicates()}", flush=True)
    print('identical items everywhere:', ok_all)

if __name__ == '__main__':
    main()
