"""The GPU check behind bench/gpu_check.sh: the training wing end to end on one GPU, in minutes.

A randomly initialised model of Qwen2.5-0.5B's shape (24 layers, width 896, 14 heads / 2 KV heads, MLP 4864, tied
embeddings, the vocabulary padded to Qwen's 151,936 rows: no hub access is needed) with the SID tokens of a
synthetic catalogue (3 x 256 codes) is taken through

  sft     a few SFT steps, bf16 with fp32 master weights (ZeRO-2 when the shell script finds deepspeed)
  resume  the SFT run resumed from its `last` checkpoint for one more step (as after a pre-emption), same engine
  grpo    a few GRPO steps (G=16 constrained-beam groups) from the SFT checkpoint; reports the logits dtype of the
          rollouts (bf16 autocast as training, issue 23) and whether TF32 is on
  eval    256 users at 50 beams from the GRPO checkpoint (bf16 autocast): our `sid_beam_search` (through `evaluate.rank_prompts`) vs
          `generate` + the reference's per-beam dict processor (bench/decoding.py), same items checked

and prints tokens/s, seconds per step, peak GPU memory and ms/user. `--tiny` runs the same code on CPU with a tiny
model in seconds (tests/test_gpu_check.py). Every phase writes `<out>/<phase>.json`; the last line is the summary.

  python bench/gpu_check.py --phase all --out /tmp/gc            # one process, no DeepSpeed
  python bench/gpu_check.py --tiny --out /tmp/gc                 # CPU smoke test
"""
from __future__ import annotations
import argparse, importlib.util, json, os, sys, time
from pathlib import Path
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import numpy as np
import torch

QWEN_VOCAB = 151_936

def _bench_decoding():
    "bench/decoding.py (the faithful reference processor), loaded by path."
    spec = importlib.util.spec_from_file_location('bench_decoding', REPO/'bench'/'decoding.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def sizes(tiny:bool) -> dict:
    "Every size of the check: the model, the batches, the steps, the users and beams."
    if tiny: return dict(model=dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, vocab_size=400),
                         vocab_rows=None, items=(4, 4, 6), users=300, sft_steps=2, global_batch=8, micro_batch=4, max_length=128,
                         grpo_steps=2, G=4, prompts=4, grpo_micro=2, eval_users=16, beams=10, batch=8)
    return dict(model=dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864, vocab_size=4000,
                           max_positions=32768, dtype='bfloat16'), vocab_rows=QWEN_VOCAB, items=(8, 5, 25), users=2500,
                sft_steps=6, global_batch=64, micro_batch=16, max_length=256, grpo_steps=3, G=16, prompts=16, grpo_micro=4,
                eval_users=256, beams=50, batch=16)

def world(z:dict, seed:int=0):
    "Synthetic data and a collision-free 3 x 256 SID index (codes drawn at random: the check times shapes, not quality)."
    from minionerec.synthetic import make_synthetic, SyntheticConfig
    from minionerec.sid import SIDIndex
    t, s, per = z['items']
    data = make_synthetic(SyntheticConfig(n_top=t, n_sub=s, items_per_leaf=per, n_users=z['users'], seed=seed))
    flat = np.random.default_rng(seed).choice(256 ** 3, len(data.items), replace=False)
    return data, SIDIndex(np.stack([flat // 65536, flat // 256 % 256, flat % 256], 1), (256, 256, 256))

def peak_gb() -> float|None:
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if torch.cuda.is_available() else None

def sft_config(z, tiny):
    from minionerec.sft import SFTConfig
    return SFTConfig(lr=1e-4, warmup_ratio=0.0, epochs=1, max_steps=z['sft_steps'], global_batch_size=z['global_batch'],
                     micro_batch_size=z['micro_batch'], max_length=z['max_length'], bf16=not tiny, deterministic=tiny, patience=0)

def sft_world(z):
    "The SFT phase's model, tokenizer, index and examples (the same for the run and its resume)."
    from minionerec.model import ModelConfig, load_backbone, add_sid_tokens
    from minionerec.tasks import TaskMixConfig, build_mixture
    data, index = world(z)
    mcfg = ModelConfig(**z['model'], attn_implementation='sdpa')
    model, tok = load_backbone(mcfg, [x for x in data.items.title.tolist() + data.items.description.tolist() if x])
    add_sid_tokens(tok, model, index)
    if z['vocab_rows']: model.resize_token_embeddings(z['vocab_rows'], mean_resizing=False)   # Qwen's head cost
    mix = TaskMixConfig(max_per_task=z['global_batch'] * (z['sft_steps'] + 1))
    return model, tok, index, build_mixture(data, index, 'train', mix, seed=0, tokenizer=tok), build_mixture(data, index, 'valid', mix, seed=0, tokenizer=tok)[:32]

def phase_sft(z, tiny, out:Path) -> dict:
    from minionerec.sft import train_sft
    model, tok, index, train, valid = sft_world(z)
    cfg = sft_config(z, tiny).replace(resume=False)
    marks = []
    res = train_sft(cfg, model, tok, train, valid, out_dir=out/'sft', index=index,
                    on_step=lambda st: marks.append((time.perf_counter(), st['train_tokens'])))
    (t0, k0), (t1, k1) = marks[0], marks[-1]                      # the first step (warm-up, allocation) is left out
    return {'engine': res.plan['engine'], 'precision': res.plan['mixed_precision'], 'master_weights': res.plan['master_weights'],
            'params_M': round(sum(p.numel() for p in model.parameters()) / 1e6, 1), 'steps': res.steps, 'updates': res.updates,
            'tokens_per_s': round((k1 - k0) / max(t1 - t0, 1e-9)), 's_per_step': round((t1 - t0) / max(len(marks) - 1, 1), 3),
            'train_loss': round(float(res.history.query("split == 'train' and task == 'all'").loss.iloc[-1]), 4),
            'peak_gpu_gb': peak_gb(), 'checkpoint': str(res.last_checkpoint)}

def phase_resume(z, tiny, out:Path) -> dict:
    """The SFT run of `phase_sft` resumed from `<out>/sft/last` for one more step, as after a pre-emption (same engine:
    DeepSpeed when the shell script found it). A refusal or failure is reported, not raised."""
    from minionerec.sft import train_sft
    model, tok, index, train, valid = sft_world(z)
    cfg = sft_config(z, tiny).replace(max_steps=z['sft_steps'] + 1, resume=True)
    try: res = train_sft(cfg, model, tok, train, valid, out_dir=out/'sft', index=index)
    except Exception as e: return {'resumed': False, 'error': f'{type(e).__name__}: {e}'[:300]}
    return {'resumed': res.steps == z['sft_steps'] + 1, 'engine': res.plan['engine'], 'steps': res.steps, 'updates': res.updates,
            'peak_gpu_gb': peak_gb()}

def rollout_precision(policy) -> dict:
    "The logits dtype of the no-grad calls (rollouts, validation, reference log-probs) of a GRPO run, and TF32: a hook on the head."
    seen = set()
    policy.get_output_embeddings().register_forward_hook(lambda m, i, o: None if torch.is_grad_enabled() else seen.add(str(o.dtype).replace('torch.', '')))
    return seen

def phase_grpo(z, tiny, out:Path) -> dict:
    from minionerec.model import load_checkpoint
    from minionerec.grpo import GRPOConfig
    from minionerec.grpo_trainer import train_grpo
    from minionerec.tasks import rl_examples
    data, index = world(z)
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    model, tok = load_checkpoint(out/'sft'/'last', dtype=None if tiny else 'bfloat16')
    no_grad_dtypes = rollout_precision(model)
    cfg = GRPOConfig(num_generations=z['G'], prompts_per_step=z['prompts'], micro_batch=z['grpo_micro'], max_steps=z['grpo_steps'],
                     lr=1e-5, warmup_ratio=0.0, eval_every=0, eval_beams=10, eval_max_users=z['prompts'], beam_batch_size=z['prompts'],
                     keep_best=False, bf16=True, deterministic=tiny, tasks=('rec',), resume=False)   # bf16 on CPU too: the tiny run checks it
    train = rl_examples(data, index, 'train', ('rec',))[:z['prompts'] * z['grpo_steps']]
    from minionerec.rewards import RewardConfig                    # an untrained policy rarely hits: penalize every miss, so steps update
    res = train_grpo(cfg, model, tok, index, train, rl_examples(data, index, 'valid', ('rec',)), out_dir=out/'grpo',
                     reward_cfg=RewardConfig(miss='penalize_all'))
    h = res.history
    return {'device': dev, 'steps': res.steps, 'groups_per_step': int(h.groups.iloc[-1]), 'G': z['G'],
            's_per_step': round(float(h.seconds.iloc[1:].mean() if len(h) > 1 else h.seconds.mean()), 3),
            'rollout_s': round(float(h.rollout_s.mean()), 3), 'update_s': round(float(h.update_s.mean()), 3),
            'kl_last': float(h.kl.iloc[-1]), 'rollout_logits': '/'.join(sorted(no_grad_dtypes)),
            'tf32': bool(torch.backends.cuda.matmul.allow_tf32), 'peak_gpu_gb': peak_gb(), 'checkpoint': str(out/'grpo'/'checkpoint')}

def phase_eval(z, tiny, out:Path) -> dict:
    from minionerec.model import load_checkpoint
    from minionerec.decoding import SIDTrie, SIDConstraintProcessor, beam_generation_config, plain_generation_defaults, encode_prompts, _clean
    from minionerec.evaluate import rank_prompts, process_state, rank_metrics
    from minionerec.tasks import rl_examples, RESPONSE_HEADER
    from transformers import LogitsProcessorList
    bd = _bench_decoding()
    data, index = world(z)
    state = process_state()
    model, tok = load_checkpoint(out/'grpo'/'checkpoint', dtype=None if tiny else 'bfloat16', device=state.device)
    exs = rl_examples(data, index, 'test', ('rec',))
    exs = (exs * (z['eval_users'] // max(len(exs), 1) + 1))[:z['eval_users']]
    prompts, B, bs = [e['prompt'] for e in exs], z['beams'], z['batch']
    trie = SIDTrie.from_index(index, tok)
    header = tok(RESPONSE_HEADER, add_special_tokens=False)['input_ids']
    ref = bd.reference_dict(index, tok, header)
    def sync():
        if torch.cuda.is_available(): torch.cuda.synchronize()
    def reference(ps):                                             # generate + the per-beam dict processor, on the device
        cfg = beam_generation_config(B, trie.n_steps, tok.eos_token_id, tok.pad_token_id); items = []
        for s in range(0, len(ps), bs):
            ids, am = encode_prompts(tok, ps[s:s + bs], state.device)
            with plain_generation_defaults(model), torch.no_grad():
                o = model.generate(input_ids=ids, attention_mask=am, generation_config=cfg,
                                   logits_processor=LogitsProcessorList([bd.PerBeamDictProcessor(ref, len(header), B)]))
            items.append(_clean(trie, o.sequences[:, ids.shape[1]:], o.sequences_scores)[0].view(-1, B).cpu())
        return torch.cat(items).numpy()
    rank_prompts(model, tok, prompts[:bs], trie, B, bs, state, bf16=not tiny); reference(prompts[:1]); sync()   # warm-up
    t = time.perf_counter(); ours, _ = rank_prompts(model, tok, prompts, trie, B, bs, state, bf16=not tiny); sync(); t_ours = time.perf_counter() - t
    t = time.perf_counter(); theirs = reference(prompts); sync(); t_ref = time.perf_counter() - t
    m = rank_metrics(ours, np.array([e['item_id'] for e in exs]), (10, 50 if B >= 50 else B))
    return {'users': len(prompts), 'beams': B, 'ours_ms_per_user': round(1000 * t_ours / len(prompts), 2),
            'generate_per_beam_ms_per_user': round(1000 * t_ref / len(prompts), 2), 'speedup': round(t_ref / t_ours, 2),
            'same_items_share': float((ours == theirs).all(1).mean()), 'invalid': int((ours < 0).sum()),
            'NDCG@10 (random weights)': round(m['NDCG@10'], 4), 'peak_gpu_gb': peak_gb()}

PHASES = {'sft': phase_sft, 'resume': phase_resume, 'grpo': phase_grpo, 'eval': phase_eval}

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--phase', default='all', help="comma-separated phases among sft, grpo, eval, or 'all'")
    ap.add_argument('--tiny', action='store_true', help='tiny model on CPU: a smoke test of the script in seconds')
    ap.add_argument('--out', default=os.environ.get('OUT') or '/tmp/minionerec_gpu_check', help='working folder (checkpoints, <phase>.json)')
    a = ap.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    z = sizes(a.tiny)
    torch.set_num_threads(2 if a.tiny else max(1, (os.cpu_count() or 2) // 2))
    rank0 = int(os.environ.get('RANK', '0')) == 0
    results = {}
    for ph in (list(PHASES) if a.phase == 'all' else a.phase.split(',')):
        if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        r = PHASES[ph](z, a.tiny, out) | {'wall_s': round(time.perf_counter() - t, 1)}
        results[ph] = r
        if rank0:
            (out/f'{ph}.json').write_text(json.dumps(r, indent=1))
            print(f'gpu_check {ph}: ' + ', '.join(f'{k}={v}' for k, v in r.items() if k != 'checkpoint'), flush=True)
    return results

if __name__ == '__main__':
    main()
