"""bf16 end to end (issue 23, item 2): with `bf16` on, every model call outside the training step -- GRPO's rollouts and
validation, the SFT validation's ranking score, `evaluate.rank_prompts` (the evaluate stage and the SFT/RL comparison)
-- runs under the same bf16 autocast as training, while the weights stay fp32 master weights. CPU has bf16 autocast,
so the dtype of the logits inside those calls is checked here: bf16 with `bf16=True`, fp32 without."""
import sys
from pathlib import Path
import numpy as np
import pytest, torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dist_runs


def logits_dtypes(model) -> list:
    "Record (grad enabled, logits dtype) of every forward of `model`'s output layer."
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
    return seen

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return dist_runs.grpo_world(tmp_path_factory.mktemp('bf16'))

def _checkpoint(world):
    from minionerec.model import load_checkpoint
    return load_checkpoint(world/'ckpt')

@pytest.mark.parametrize('bf16,dtype', [(True, torch.bfloat16), (False, torch.float32)])
def test_rank_prompts_runs_in_the_training_precision(world, bf16, dtype):
    from minionerec.data import load_published
    from minionerec.sid import SIDIndex
    from minionerec.decoding import SIDTrie
    from minionerec.evaluate import rank_prompts, evaluate_model, EvalConfig
    model, tok = _checkpoint(world)
    data, index = load_published(world/'data'), SIDIndex.from_json(world/'index.json')
    seen = logits_dtypes(model)
    from minionerec.tasks import rec_examples
    prompts = [e['prompt'] for e in list(rec_examples(data, index, 'valid'))[:3]]
    items, scores = rank_prompts(model, tok, prompts, SIDTrie.from_index(index, tok), num_beams=4, batch_size=3, bf16=bf16)
    assert items.shape == (3, 4) and scores.dtype == np.float32 and seen and {d for _, d in seen} == {dtype}
    seen.clear()
    evaluate_model(model, tok, data, index, EvalConfig(split='valid', num_beams=4, max_users=3), bf16=bf16)
    assert seen and {d for _, d in seen} == {dtype}
    assert {p.dtype for p in model.parameters()} == {torch.float32}                  # autocast, not a cast of the weights

@pytest.mark.parametrize('bf16,dtype', [(True, torch.bfloat16), (False, torch.float32)])
def test_grpo_rollouts_and_validation_run_in_the_training_precision(world, tmp_path, bf16, dtype, monkeypatch):
    "Every no-grad call of a GRPO run (rollouts, validation before and after, reference log-probs) in the training precision."
    import minionerec.model as mm
    load, calls = mm.load_checkpoint, []
    def load_and_watch(*a, **k):
        m, t = load(*a, **k); calls.append(logits_dtypes(m)); return m, t
    monkeypatch.setattr(mm, 'load_checkpoint', load_and_watch)               # dist_runs.grpo_run imports it when called
    dist_runs.grpo_run(world, tmp_path/'out', max_steps=1, eval_max_users=3, bf16=bf16)
    no_grad = [d for g, d in calls[0] if not g]
    assert len(no_grad) > 2 and set(no_grad) == {dtype}, set(no_grad)

@pytest.mark.parametrize('bf16,dtype', [(True, torch.bfloat16), (False, torch.float32)])
def test_sft_ranking_score_runs_in_the_training_precision(tmp_path, bf16, dtype, monkeypatch):
    "The `score_fn` of SFT validation (the pipeline's decodes validation users) is called in the training precision."
    import minionerec.sft as sft
    seen, train, hooked = [], sft.train_sft, set()
    def score_fn(model):
        if id(model) not in hooked: hooked.add(id(model)); seen.append(logits_dtypes(model))
        with torch.no_grad(): model(input_ids=torch.tensor([[1, 2, 3]], device=model.device))   # the head's output is recorded
        return {'NDCG@10': 0.5}
    monkeypatch.setattr(sft, 'train_sft', lambda *a, **k: train(*a, **{**k, 'score_fn': score_fn}))   # sft_run imports it when called
    dist_runs.sft_run(tmp_path/'sft', bf16=bf16, monitor='NDCG@10', max_steps=2)
    calls = [d for rec in seen for _, d in rec]
    assert calls and set(calls) == {dtype}, calls
