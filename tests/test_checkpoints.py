"""Checkpoints a user can serve (06_model): SFT (full and LoRA) and GRPO checkpoints load with plain
`AutoModelForCausalLM` + `AutoTokenizer` and give the trained model's logits; each carries the SID index and a
deterministic beam `generation_config.json`, and is readable by others (folders 0755, files 0644 under umask 022)."""
import os, stat, sys
from pathlib import Path
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dist_runs import synthetic_world, grpo_world, grpo_run
torch.set_num_threads(1)


def _plain_logits(path, prompts):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return _logits(model, tok, prompts), tok


def _logits(model, tok, prompts):
    from minionerec.model import left_pad
    from minionerec.encode import prompt_ids
    ids, mask = left_pad(prompt_ids(tok, prompts), tok.pad_token_id)
    model.eval()
    with torch.no_grad(): return model(input_ids=ids, attention_mask=mask).logits


def _check_servable(path, index, tok):
    from minionerec.core import read_json
    from minionerec.sid import SIDIndex
    gen = read_json(path/'generation_config.json')
    assert gen['do_sample'] is False and gen['num_beams'] > 1 and gen['max_new_tokens'] == index.n_levels + 1
    assert not {'top_k', 'top_p', 'temperature', 'repetition_penalty'} & set(gen), gen
    assert gen['eos_token_id'] == tok.eos_token_id and gen['pad_token_id'] == tok.pad_token_id
    assert SIDIndex.from_json(path/'index.json').sids() == index.sids()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [path, *path.rglob('*')] if not p.name.startswith('.')}
    assert modes == {0o755, 0o644}, {oct(m) for m in modes}


@pytest.fixture(autouse=True)
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize('mode', ['full', 'lora'])
def test_sft_checkpoint_serves(mode, tmp_path):
    from minionerec.model import ModelConfig, load_backbone, add_sid_tokens, apply_training_mode, checkpoint_meta
    from minionerec.tasks import TaskMixConfig, build_mixture
    from minionerec.sft import SFTConfig, train_sft
    data, index = synthetic_world()
    mcfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, vocab_size=300, mode=mode, lora_r=4)
    model, tok = load_backbone(mcfg, [t for t in data.items.title.tolist() + data.items.description.tolist() if t])
    model = apply_training_mode(model, mcfg, add_sid_tokens(tok, model, index))
    mix = TaskMixConfig(max_per_task=8)
    train, valid = build_mixture(data, index, 'train', mix, seed=0), build_mixture(data, index, 'valid', mix, seed=0)
    cfg = SFTConfig(epochs=1, max_steps=3, lr=1e-2, global_batch_size=8, micro_batch_size=4, max_length=256, warmup_ratio=0.0)
    res = train_sft(cfg, model, tok, train, valid, out_dir=tmp_path, index=index)
    prompts = [e['prompt'] for e in valid[:4]]
    for ck in (res.best_checkpoint, res.last_checkpoint):
        _check_servable(ck, index, tok)
    plain, tok2 = _plain_logits(res.best_checkpoint, prompts)
    assert tok2(prompts)['input_ids'] == tok(prompts)['input_ids']
    torch.testing.assert_close(plain, _logits(model, tok, prompts), rtol=1e-4, atol=1e-4)   # the trained (best) weights
    if mode == 'lora':
        meta = checkpoint_meta(res.best_checkpoint)['adapter']
        assert meta['merged_into_top_level'] and (res.best_checkpoint/'adapter'/'adapter_model.safetensors').exists()
        from minionerec.core import read_json
        assert read_json(res.best_checkpoint/'adapter'/'adapter_config.json')['base_model_name_or_path'] == meta['base_model']


def test_grpo_checkpoint_serves(tmp_path):
    from minionerec.sid import SIDIndex
    root = grpo_world(tmp_path/'world')
    res = grpo_run(root, tmp_path/'rl', max_steps=2)
    index = SIDIndex.from_json(root/'index.json')
    from minionerec.model import load_tokenizer
    tok = load_tokenizer(root/'ckpt')
    _check_servable(tmp_path/'rl'/'checkpoint', index, tok)
    prompts = ['The user bought ' + index.sid(1) + index.sid(2) + '. Which item comes next?\n### Response:\n']
    plain, _ = _plain_logits(tmp_path/'rl'/'checkpoint', prompts)
    torch.testing.assert_close(plain, _logits(res.model, tok, prompts), rtol=1e-4, atol=1e-4)
    rows = plain.shape[-1]
    assert rows % 64 == 0 and rows >= len(tok)                 # the vocabulary is padded; decoding still yields items
    from minionerec.decoding import SIDTrie, sid_beam_search
    out = sid_beam_search(res.model, tok, prompts, SIDTrie.from_index(index, tok), num_beams=5)
    assert (out.items >= 0).all() and out.n_duplicates() == 0


def _dtypes(path) -> set:
    from safetensors.torch import load_file
    return {str(v.dtype).replace('torch.', '') for v in load_file(Path(path)/'model.safetensors').values() if v.is_floating_point()}


def test_bf16_runs_save_best_in_bf16_and_last_in_fp32(tmp_path):
    """bf16 training (autocast with fp32 master weights; CPU has bf16 autocast): the best checkpoint and GRPO's final
    checkpoint are written in bf16 (the training dtype, what a server loads) and load as bf16, while the resumable `last`
    keeps the fp32 master weights, so a resume continues exactly."""
    from minionerec.core import read_json
    from minionerec.model import load_checkpoint
    from dist_runs import sft_run
    res = sft_run(tmp_path/'sft', bf16=True, max_steps=2, eval_every=1, patience=0)
    assert res.plan['mixed_precision'] == 'bf16' and res.plan['master_weights'] == 'float32'
    assert _dtypes(res.best_checkpoint) == {'bfloat16'} and _dtypes(res.last_checkpoint) == {'float32'}
    assert read_json(res.best_checkpoint/'config.json')['dtype'] == 'bfloat16'
    assert {p.dtype for p in load_checkpoint(res.best_checkpoint)[0].parameters()} == {torch.bfloat16}
    rl = grpo_run(grpo_world(tmp_path/'world'), tmp_path/'rl', bf16=True, max_steps=2, save_every=1, keep_best=True)
    assert read_json(tmp_path/'rl'/'summary.json')['precision']['mixed_precision'] == 'bf16'
    assert _dtypes(tmp_path/'rl'/'checkpoint') == _dtypes(tmp_path/'rl'/'best') == {'bfloat16'}
    assert _dtypes(tmp_path/'rl'/'last') == {'float32'}
    assert {p.dtype for p in rl.model.parameters()} == {torch.float32}        # the returned policy keeps its fp32 masters
