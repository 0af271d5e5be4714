"""Small SFT and GRPO runs that the tests launch under `torchrun --nproc_per_node 2` (CPU, gloo) and also call in-process
(one process), so both sides run exactly the same code. `python tests/dist_runs.py sft|grpo OUT_DIR '{json overrides}'`
(`kill_at: n` stops the run after step n, as a pre-empted job).

`deepspeed_on_cpu()` lets accelerate run DeepSpeed without an accelerator device: accelerate only initializes a
process group for DeepSpeed when it finds a GPU-like device (with `cpu=True` it ignores DeepSpeed altogether), so the
test patches its backend choice to gloo; DeepSpeed's own CPU accelerator does the rest (ZeRO-2 optimizer, engine)."""
import json, os, sys
from pathlib import Path
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def gloo_for_deepspeed():
    """Let accelerate start DeepSpeed on CPU processes: its backend choice falls back to gloo when there is no accelerator
    device, and DeepSpeed's shared-memory allreduce op is not JIT-compiled (a C++ build of minutes on a fresh machine;
    torch.distributed's gloo allreduce does the same work)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    orig = PartialState._prepare_backend
    if getattr(orig, 'gloo_patch', False): return
    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        import deepspeed.comm.torch   # the name binds `deepspeed.comm.torch`, the attribute: torch itself; the module is in sys.modules
        sys.modules['deepspeed.comm.torch'].build_shm_op = lambda: None
        b, t = orig(self, cpu, sagemaker_dp, backend)
        if b is None and not cpu and int(os.environ.get('LOCAL_RANK', -1)) != -1: return 'gloo', DistributedType.MULTI_CPU
        return b, t
    _prepare_backend.gloo_patch = True
    PartialState._prepare_backend = _prepare_backend


def deepspeed_on_cpu(config=REPO/'configs'/'deepspeed_zero2.json'):
    "Make `Accelerator()` use DeepSpeed (config file `config`) on CPU processes with the gloo backend."
    os.environ['ACCELERATE_USE_DEEPSPEED'] = 'true'
    os.environ['ACCELERATE_DEEPSPEED_CONFIG_FILE'] = str(config)
    gloo_for_deepspeed()


def synthetic_world(seed:int=0):
    "The tiny synthetic catalogue and a collision-free 3-level SID index (8 codes per level)."
    from minionerec.synthetic import make_synthetic, SyntheticConfig
    from minionerec.sid import SIDIndex
    data = make_synthetic(SyntheticConfig.tiny())
    flat = np.random.default_rng(seed).choice(8 ** 3, len(data.items), replace=False)
    return data, SIDIndex(np.stack([flat // 64, flat // 8 % 8, flat % 8], 1))


class Killed(Exception):
    "Raised by `kill_at`: a run stopped after a step, as a pre-empted job."

def kill_at(n:int):
    "An `on_step` that stops the run after step `n` (SFT passes its loop state, GRPO the step)."
    def on_step(s):
        if (s['step'] if isinstance(s, dict) else s) == n: raise Killed(f'stopped after step {n}')
    return on_step


def sft_run(out, on_step=None, **sft):
    "SFT of a 1-layer tiny Qwen2 on 16 examples per task of the synthetic mixture; `sft` overrides `SFTConfig` fields."
    from minionerec.model import ModelConfig, load_backbone, add_sid_tokens
    from minionerec.tasks import TaskMixConfig, build_mixture
    from minionerec.sft import SFTConfig, train_sft
    data, index = synthetic_world()
    mcfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, vocab_size=300)
    model, tok = load_backbone(mcfg, [t for t in data.items.title.tolist() + data.items.description.tolist() if t])
    add_sid_tokens(tok, model, index)
    mix = TaskMixConfig(max_per_task=16)
    train, valid = build_mixture(data, index, 'train', mix, seed=0), build_mixture(data, index, 'valid', mix, seed=0)
    cfg = SFTConfig(**{**dict(epochs=1, max_steps=3, global_batch_size=8, micro_batch_size=2, max_length=256), **sft})
    return train_sft(cfg, model, tok, train, valid, out_dir=out, on_step=on_step)


def grpo_world(root):
    "Synthetic data, a SID index and an untrained tiny checkpoint under `root` (built once, reused by every run)."
    from minionerec.model import train_bpe_tokenizer, build_tiny_model, add_sid_tokens, save_checkpoint, ModelConfig
    from minionerec.tasks import scaffold_texts
    from minionerec.data import write_published
    root = Path(root)
    if (root/'ckpt'/'config.json').exists(): return root
    data, _ = synthetic_world()
    n = len(data.items)
    from minionerec.sid import SIDIndex
    index = SIDIndex(np.stack([np.arange(n) // 16, (np.arange(n) // 4) % 4, np.arange(n) % 4], 1))
    write_published(data, root/'data'); index.to_json(root/'index.json')
    tok = train_bpe_tokenizer(data.items.title.tolist() + scaffold_texts(), vocab_size=512)
    model = build_tiny_model(ModelConfig.tiny(), tok)
    add_sid_tokens(tok, model, index)
    save_checkpoint(model, tok, root/'ckpt')
    return root


def grpo_run(root, out, reward=None, on_step=None, report_to='none', **grpo):
    "GRPO from the checkpoint of `grpo_world(root)` on 64 seeded RL prompts (tasks rec + title2sid); overrides of `GRPOConfig`."
    from minionerec.data import load_published
    from minionerec.sid import SIDIndex
    from minionerec.model import load_checkpoint
    from minionerec.grpo import GRPOConfig
    from minionerec.tasks import rl_examples
    from minionerec.grpo_trainer import train_grpo, _subset
    from minionerec.rewards import RewardConfig
    root = Path(root)
    data, index = load_published(root/'data'), SIDIndex.from_json(root/'index.json')
    model, tok = load_checkpoint(root/'ckpt')
    base = dict(prompts_per_step=4, micro_batch=1, max_steps=2, eval_max_users=6, beam_batch_size=2, tasks=('rec', 'title2sid'))
    cfg = GRPOConfig.tiny().replace(**{**base, **grpo})
    train = _subset(rl_examples(data, index, 'train', cfg.tasks), 64, cfg.seed)
    valid = rl_examples(data, index, 'valid', ('rec',))
    # an untrained policy rarely hits the target: 'penalize_all' gives every group non-constant rewards, hence gradients
    return train_grpo(cfg, model, tok, index, train, valid, out_dir=out, reward_cfg=RewardConfig(**(reward or {'miss': 'penalize_all'})),
                      on_step=on_step, report_to=report_to)


if __name__ == '__main__':
    kind, out = sys.argv[1], Path(sys.argv[2])
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    torch.set_num_threads(1)
    if kw.pop('deepspeed_cpu', False): deepspeed_on_cpu()
    stop = kill_at(kw.pop('kill_at')) if 'kill_at' in kw else None
    if kind == 'sft': sft_run(out, on_step=stop, **kw)
    elif kind == 'grpo': grpo_run(kw.pop('root'), out, on_step=stop, **kw)
    else: raise SystemExit(f'unknown run {kind!r}: sft or grpo')
    if int(os.environ.get('RANK', '0')) == 0: print(f'{kind} done: {out}', flush=True)
