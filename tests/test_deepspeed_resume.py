"""DeepSpeed ZeRO-2 runs resume mid-stage (issue 23): 2 CPU processes (gloo, `torchrun`), a run stopped after a step as a
pre-empted job, started again with the same command, ends in the same state as an uninterrupted run: history, weights and
the engine's ZeRO optimizer shards (written and read by `accelerator.save_state` / `load_state` inside `train.TrainRun`).
DeepSpeed is a test requirement here: these tests do not skip without it."""
import json, os, socket, subprocess, sys
from pathlib import Path
import pandas as pd
import numpy as np
import torch
from safetensors.torch import load_file

from minionerec.core import read_json
from dist_runs import grpo_world

HERE = Path(__file__).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'MINIONEREC_QUIET': '1', 'TOKENIZERS_PARALLELISM': 'false',
       'PYTHONPATH': os.pathsep.join([str(HERE.parent), os.environ.get('PYTHONPATH', '')])}


def _zero2(kind:str, out:Path, **kw) -> subprocess.CompletedProcess:
    "`torchrun --nproc_per_node 2 tests/dist_runs.py kind out` under DeepSpeed ZeRO-2 on CPU (configs/deepspeed_zero2.json)."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(port),
                           str(HERE/'dist_runs.py'), kind, str(out), json.dumps({'deepspeed_cpu': True, **kw})],
                          cwd=out.parent, env=ENV, capture_output=True, text=True, timeout=500)


def _tensors(x, prefix='') -> dict:
    "Every tensor of a nested dict / list (a DeepSpeed optimizer shard), by path."
    if torch.is_tensor(x): return {prefix: x}
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, (list, tuple)) else ()
    return {k: v for key, val in items for k, v in _tensors(val, f'{prefix}/{key}').items()}


def _same_engine_state(a:Path, b:Path):
    "The ZeRO optimizer shards of every rank (fp32 master partitions, Adam moments) agree between two `last/engine` folders."
    fa = sorted(p.relative_to(a) for p in a.rglob('*optim_states.pt'))
    assert len(fa) == 2 and fa == sorted(p.relative_to(b) for p in b.rglob('*optim_states.pt')), fa   # one shard per process
    for f in fa:
        ta = _tensors(torch.load(a/f, map_location='cpu', weights_only=False))
        tb = _tensors(torch.load(b/f, map_location='cpu', weights_only=False))
        assert ta.keys() == tb.keys() and len(ta) > 2, (f, list(ta)[:5])
        for k in ta: torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6, msg=f'{f}{k}')


def _same_weights(a:Path, b:Path):
    wa, wb = load_file(a/'model.safetensors'), load_file(b/'model.safetensors')
    assert wa.keys() == wb.keys()
    for k in wa: torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)


def test_sft_zero2_resumes_mid_run(tmp_path):
    """SFT under ZeRO-2, stopped after step 3 (`last` at step 2), started again: steps 3-4 rerun from the engine's shards and
    end where the uninterrupted run ends (train and validation losses, learning rates, weights, optimizer shards)."""
    kw = dict(max_steps=4, save_every=2, eval_every=2, patience=0, warmup_ratio=0.5)
    p = _zero2('sft', tmp_path/'full', **kw); assert p.returncode == 0, p.stderr[-4000:]
    p = _zero2('sft', tmp_path/'part', kill_at=3, **kw)
    assert p.returncode != 0 and 'stopped after step 3' in p.stderr, p.stderr[-3000:]
    last = tmp_path/'part'/'last'
    st = read_json(last/'trainer_state.json')
    assert st['engine'] == 'deepspeed' and st['loop']['step'] == 2 and (last/'engine').is_dir() and not st['has_optimizer']
    p = _zero2('sft', tmp_path/'part', kill_at=1, **kw)        # a restart from scratch would stop after step 1
    assert p.returncode == 0, p.stderr[-4000:]
    full, part = read_json(tmp_path/'full'/'sft_result.json'), read_json(tmp_path/'part'/'sft_result.json')
    assert part['plan']['engine'] == 'deepspeed' and part['steps'] == part['updates'] == full['updates'] == 4
    hf, hp = pd.read_csv(tmp_path/'full'/'history.csv'), pd.read_csv(tmp_path/'part'/'history.csv')
    pd.testing.assert_frame_equal(hp.drop(columns='loss'), hf.drop(columns='loss'))        # no step twice, same rows
    np.testing.assert_allclose(hp.loss.values, hf.loss.values, rtol=0, atol=1e-6)
    _same_weights(tmp_path/'full'/'last', last)
    _same_engine_state(tmp_path/'full'/'last'/'engine', last/'engine')


def test_grpo_zero2_resumes_mid_run(tmp_path):
    """GRPO under ZeRO-2, stopped after step 3 (`last` at step 2), started again: the same history, validation and final
    state (weights, optimizer shards, update count) as the uninterrupted run."""
    root = grpo_world(tmp_path/'world')
    kw = dict(root=str(root), prompts_per_step=8, micro_batch=2, max_steps=4, save_every=2, eval_every=0)
    p = _zero2('grpo', tmp_path/'full', **kw); assert p.returncode == 0, p.stderr[-4000:]
    p = _zero2('grpo', tmp_path/'part', kill_at=3, **kw)
    assert p.returncode != 0 and 'stopped after step 3' in p.stderr, p.stderr[-3000:]
    st = read_json(tmp_path/'part'/'last'/'trainer_state.json')
    assert st['engine'] == 'deepspeed' and st['step'] == 2 and st['updates'] == 2
    p = _zero2('grpo', tmp_path/'part', kill_at=1, **kw)       # a restart from scratch would stop after step 1
    assert p.returncode == 0, p.stderr[-4000:]
    sf, sp = read_json(tmp_path/'full'/'summary.json'), read_json(tmp_path/'part'/'summary.json')
    assert sp['precision']['engine'] == 'deepspeed' and sp['steps'] == sp['updates'] == sf['updates'] == 4
    timing = ['seconds', 'rollout_s', 'update_s']
    hf, hp = pd.read_csv(tmp_path/'full'/'history.csv'), pd.read_csv(tmp_path/'part'/'history.csv')
    assert hp.step.tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(hp.drop(columns=timing), hf.drop(columns=timing), rtol=0, atol=1e-6)
    ef, ep = pd.read_csv(tmp_path/'full'/'evals.csv'), pd.read_csv(tmp_path/'part'/'evals.csv')
    pd.testing.assert_frame_equal(ep.drop(columns='seconds'), ef.drop(columns='seconds'))
    _same_weights(tmp_path/'full'/'last', tmp_path/'part'/'last')
    _same_engine_state(tmp_path/'full'/'last'/'engine', tmp_path/'part'/'last'/'engine')
