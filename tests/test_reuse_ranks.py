"""The rl and dpo stages take SFT's ranks from the evaluate stage (`evaluate.evaluate_stage_results`) when that stage is complete
for the current config, instead of ranking SFT again: the files they write are the same as with a re-ranking (tiny preset)."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1',
       'TOKENIZERS_PARALLELISM': 'false', 'MPLBACKEND': 'Agg', 'PYTHONPATH': str(REPO)}
QUICK = [a for o in ('baselines.mf=null', 'baselines.tiger=null', 'baselines.hstu=null', 'dpo.enabled=true') for a in ('--set', o)]
TIMES = ('seconds', 'train_s', 'rank_s')            # wall times: the reused summary carries the evaluate stage's ranking time
REUSED = 'MiniOneRec SFT ranks of valid, test reused from the evaluate stage'

def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'minionerec.cli', *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)

def _untimed(d): return {k: v for k, v in d.items() if k not in TIMES}

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A tiny run through evaluate, rl and dpo (SFT reused), and a copy whose evaluate stage is stale, with rl and dpo rerun (SFT ranked)."
    reused = tmp_path_factory.mktemp('reuse')/'run'
    r = _cli('pipeline', '--config', 'tiny', '--run-dir', str(reused), *QUICK, '--set', 'stages=[prepare,embed,sid,sft,evaluate,rl,dpo]')
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count(REUSED) == 2, r.stderr[-3000:]             # once in rl, once in dpo
    ranked = reused.parent/'ranked'; shutil.copytree(reused, ranked)
    done = ranked/'evaluate'/'DONE.json'                                # another config's evaluate stage: its ranks must not be used
    done.write_text(json.dumps({**json.loads(done.read_text()), 'fingerprint': 'another-config'}))
    for stage in ('rl', 'dpo'):
        r = _cli(stage, '--config', 'tiny', '--run-dir', str(ranked), *QUICK, '--force')
        assert r.returncode == 0, r.stderr[-3000:]
        assert REUSED not in r.stderr and 'ranked again: the evaluate stage is not complete for this config' in r.stderr, r.stderr[-3000:]
    return reused, ranked

@pytest.mark.parametrize('stage', ['rl', 'dpo'])
def test_reused_sft_ranks_equal_reranked_ones(runs, stage):
    reused, ranked = runs
    for f in ('ranks.csv', 'ranks_valid.csv'):
        a, b = pd.read_csv(reused/stage/f), pd.read_csv(ranked/stage/f)
        assert list(a.columns) == list(b.columns) and list(a.columns)[:4] == ['row', 'target', 'user_id', 'MiniOneRec SFT']
        pd.testing.assert_frame_equal(a[['row', 'target', 'user_id', 'MiniOneRec SFT']], b[['row', 'target', 'user_id', 'MiniOneRec SFT']])
        ev = pd.read_csv(reused/'evaluate'/f)                        # and they are the evaluate stage's
        assert a['MiniOneRec SFT'].equals(ev['MiniOneRec SFT']) and a['row'].equals(ev['row'])
    ca, cb = (json.loads((d/stage/'comparison.json').read_text()) for d in (reused, ranked))
    assert list(ca) == list(cb) and list(ca['splits']) == list(cb['splits']) == ['valid', 'test']
    for sp in ca['splits']:
        a, b = ca['splits'][sp]['MiniOneRec SFT'], cb['splits'][sp]['MiniOneRec SFT']
        assert list(a) == list(b) and _untimed(a) == _untimed(b), sp     # same keys, same order, same numbers
        sfx = '' if sp == 'test' else '_valid'
        assert a == json.loads((reused/'evaluate'/f'metrics{sfx}.json').read_text())['MiniOneRec SFT']
        assert a['rank_s'] is not None
    # the whole files: ranks byte for byte, comparison.json up to wall times (both stages retrain their model: deterministic on CPU)
    for f in ('ranks.csv', 'ranks_valid.csv'): assert (reused/stage/f).read_bytes() == (ranked/stage/f).read_bytes(), f
    assert _strip(ca) == _strip(cb)

def _strip(x):
    "`x` without the wall-time keys, at any depth."
    if isinstance(x, dict): return {k: _strip(v) for k, v in x.items() if k not in TIMES}
    if isinstance(x, list): return [_strip(v) for v in x]
    return x

def test_saved_ranks_are_used_only_when_valid(runs):
    "`evaluate_stage_results` on the run: both splits when valid; none for another bf16, another eval config or several processes; not a split whose targets differ."
    from types import SimpleNamespace
    from minionerec.evaluate import evaluate_stage_results, SavedResult
    from minionerec.pipeline import RunContext
    from minionerec.presets import load_config
    reused, _ = runs
    sets = [o for o in QUICK if o != '--set']
    ctx = RunContext(load_config('tiny', sets), reused)
    exs = {sp: [{'item_id': int(t)} for t in ctx.data().splits[sp]['target']] for sp in ('valid', 'test')}   # rec prompts: the row's target
    bf16 = ctx.cfg.sft.bf16
    got = evaluate_stage_results(ctx, exs, bf16)
    assert set(got) == {'valid', 'test'} and all(isinstance(r, SavedResult) and r.ranked is None for r in got.values())
    ev = pd.read_csv(reused/'evaluate'/'ranks.csv')
    assert got['test'].ranks.tolist() == ev['MiniOneRec SFT'].tolist() and got['test'].summary()['split'] == 'test'
    assert evaluate_stage_results(ctx, exs, not bf16) == {}
    assert evaluate_stage_results(ctx, exs, bf16, SimpleNamespace(num_processes=2)) == {}
    other = RunContext(load_config('tiny', sets + ['eval.max_users=16']), reused)        # another evaluate fingerprint
    assert evaluate_stage_results(other, exs, bf16) == {}
    rows = ev['row'].tolist()
    bad = {**exs, 'test': [dict(e, item_id=e['item_id'] + 1) if i == rows[0] else e for i, e in enumerate(exs['test'])]}
    assert set(evaluate_stage_results(ctx, bad, bf16)) == {'valid'}
