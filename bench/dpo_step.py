"""S-DPO step benchmark: one optimizer step's wall time (negatives by constrained beam search from the frozen SFT copy,
reference log-probs, forward/backward of 1 + K sequences per prompt) at the demo and industrial presets' model sizes,
for K = 4 / 8 negatives and 64 / 128 prompts per step, and one validation pass (200 prompts, 20 beams).

An untrained model of each preset's size on the demo's synthetic catalogue: decoding and forward/backward cost the same
trained or not (the Industrial catalogue needs the Amazon data; its SID index here is a random 3 x 256-code one).
Chapter 12c sizes the industrial preset's dpo section from these numbers. Run:
    OMP_WAIT_POLICY=PASSIVE python bench/dpo_step.py demo industrial
"""
from __future__ import annotations
import time, copy, sys
import numpy as np
import torch
torch.set_num_threads(2)
from minionerec.presets import preset, REC_ONLY
from minionerec.synthetic import make_synthetic
from minionerec.sid import SIDIndex
from minionerec.model import load_backbone, add_sid_tokens
from minionerec.decoding import SIDTrie
from minionerec.tasks import rl_examples, TaskMixConfig
from minionerec.encode import fit_prompts
from minionerec.dpo import SDPOConfig, RecSDPOTrainer, step_prompts
for name in sys.argv[1:] or ['demo', 'industrial']:
    c = preset(name)
    data = make_synthetic(preset('demo').data.synthetic)           # demo data for both (Industrial's catalogue is not on this machine)
    n = len(data.items); K = 32 if name == 'demo' else 256
    rng = np.random.default_rng(0); flat = rng.choice(K ** 3, n, replace=False)
    index = SIDIndex(np.stack([flat // K**2, flat // K % K, flat % K], 1), [K, K, K])
    model, tok = load_backbone(c.model, [t for t in data.items.title.tolist() + data.items.description.tolist() if t])
    add_sid_tokens(tok, model, index)
    tasks = c.tasks
    if name == 'industrial': tasks = tasks.replace(max_history=10)
    ex = fit_prompts(rl_examples(data, index, 'train', ('rec',), tasks, tok), tok, c.sft.max_length, 4)
    trie = SIDTrie.from_index(index, tok)
    for K_, P, mb in ((4, 64, 16), (4, 128, 16), (8, 64, 16)):
        cfg = SDPOConfig(negatives=K_, prompts_per_step=P, micro_batch=mb, max_steps=10, beam_batch_size=32)
        tr = RecSDPOTrainer(cfg, copy.deepcopy(model), tok, index, trie, total_updates=10)
        ts = []
        for s in range(1, 4):
            _, mine = step_prompts(ex, cfg, s)
            t = time.perf_counter(); st = tr.step(mine, s); ts.append((time.perf_counter() - t, st['negatives_s']))
        print(name, 'params', sum(p.numel() for p in model.parameters()), f'K={K_} prompts={P}', 'step s', [round(a, 2) for a, _ in ts], 'negatives s', [round(b, 2) for _, b in ts], flush=True)
    t = time.perf_counter(); tr.cfg = cfg.replace(eval_beams=20); m = tr.evaluate(ex[:200]); print(name, 'eval 200 prompts 20 beams s', round(time.perf_counter() - t, 2), flush=True)
