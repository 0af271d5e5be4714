"""SFT step benchmark: the output head on every position (plain causal-LM loss) vs only on labelled positions.

Completion-only SFT needs logits only where labels are (a SID target is 4 tokens after a ~100-token prompt), but the
plain forward projects every position onto the vocabulary. `token_losses(head_only_on_labels=True)` left-aligns the
rows and asks the model for `logits_to_keep` positions. This times forward + backward of one micro-batch both ways,
on the same weights and batch, and checks that the per-row losses agree; it also reports the size of the logits tensor.

Shapes: the Industrial CPU preset's tiny Qwen2 (hidden 96, 2 layers, ~3.8k vocabulary) and the same model with the
vocabulary padded to Qwen2.5's 151,936 tokens; batches of rec examples (97-token rows, 4 labels) and of a mixed
batch (one row with a 67-token description target). Run:  OMP_WAIT_POLICY=PASSIVE python bench/sft_head.py
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from minionerec.sft import token_losses
from minionerec.encode import IGNORE

def batch(B, prompt_lens, target_lens, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(p + t for p, t in zip(prompt_lens, target_lens))
    ids = torch.zeros(B, T, dtype=torch.long); mask = torch.zeros_like(ids); labels = torch.full_like(ids, IGNORE)
    for i, (p, t) in enumerate(zip(prompt_lens, target_lens)):
        row = torch.randint(10, V, (p + t,), generator=g)
        ids[i, :p + t] = row; mask[i, :p + t] = 1; labels[i, p:p + t] = row[p:]
    return {'input_ids': ids, 'attention_mask': mask, 'labels': labels}

def timed(model, b, flag, reps):
    ts = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter(); l, m = token_losses(model, b, head_only_on_labels=flag); (l * m).sum().backward(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2], (l * m).sum(1).detach()

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--reps', type=int, default=7); ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args(); torch.set_num_threads(a.threads); torch.manual_seed(0)
    B = 32
    gen = torch.Generator().manual_seed(1)
    rec_p = torch.randint(70, 120, (B,), generator=gen).tolist()
    shapes = {'rec batch (4-token targets)': (rec_p, [4] * B),
              'mixed batch (one 67-token target)': (rec_p, [4] * (B - 1) + [67])}
    print(f'{"model":<28} {"batch":<36} {"all positions ms":>17} {"labelled only ms":>17} {"speed-up":>9} {"logits MB all/labelled":>24}')
    for name, V in (('tiny (96x2, V=3,800)', 3800), ('tiny at Qwen vocab 151,936', 151_936)):
        cfg = Qwen2Config(vocab_size=V, hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(cfg)
        for bname, (pl, tl) in shapes.items():
            b = batch(B, pl, tl, V)
            t_all, r_all = timed(model, b, False, a.reps)
            t_lab, r_lab = timed(model, b, True, a.reps)
            assert torch.allclose(r_all, r_lab, rtol=1e-4, atol=1e-3), (r_all - r_lab).abs().max()
            T = b['input_ids'].shape[1]; keep = max(tl) + 1
            print(f'{name:<28} {bname:<36} {t_all * 1e3:17.1f} {t_lab * 1e3:17.1f} {t_all / t_lab:8.2f}x '
                  f'{B * (T - 1) * V * 4 / 1e6:11.1f} / {B * keep * V * 4 / 1e6:.1f}')

if __name__ == '__main__': main()
