"""Reliability and safety (issue 14): bad values refused before any work, fair metrics, full disks, one run per run
directory, leftovers of killed writes, user folders never deleted or overwritten, one-line CLI errors."""
import dataclasses, errno, importlib, json, os, signal, subprocess, sys, time, typing
from pathlib import Path
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_WAIT_POLICY': 'PASSIVE', 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1'}

def cli(*args, cwd=None, timeout=900, pre=''):
    "Run `minionerec ARGS` in a fresh interpreter (`pre`: python run first, e.g. a fault to inject)."
    code = pre + '\nimport sys; from minionerec.cli import main; sys.exit(main())'
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)

# ---------------------------------------------------------------- every numeric field has a bound

MODULES = ['core', 'data', 'protocol', 'synthetic', 'amazon', 'embed', 'rqvae', 'rqkmeans', 'sid', 'tasks', 'model', 'sft',
           'decoding', 'evaluate', 'baselines', 'rewards', 'grpo', 'pipeline']
SIGNED = {('ProtocolConfig', 'min_rating')}    # a rating threshold may be any finite number

def _config_classes():
    from minionerec.core import Config
    for m in MODULES:
        try: importlib.import_module(f'minionerec.{m}')
        except ImportError: pass
    seen, todo = [], list(Config.__subclasses__())
    while todo:
        c = todo.pop(0)
        if c not in seen and not c.__name__.startswith('_'): seen.append(c)
        todo += c.__subclasses__()
    return seen

def _numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]; args = set(typing.get_args(t)) | {t}
        if {int, float} & args: yield f.name, 'scalar'
        elif typing.get_origin(t) is tuple and {int, float} & set(typing.get_args(t)): yield f.name, 'tuple'

@pytest.mark.parametrize('cls', _config_classes(), ids=lambda c: c.__name__)
def test_every_numeric_field_refuses_a_negative_value(cls):
    "A negative number in any int/float field (a learning rate, a seed, a batch size, a cut-off) fails when the config is built."
    from minionerec.core import ConfigError
    try: base = cls().to_dict()
    except ConfigError: pytest.skip(f'{cls.__name__} has required fields')
    accepted = []
    for name, kind in _numeric_fields(cls):
        if (cls.__name__, name) in SIGNED: continue
        cur = base[name]
        bad = -7 if kind == 'scalar' else [-7] * max(len(cur or ()), 1)
        try: cls.from_dict({**base, name: bad})
        except ConfigError as e: assert name in str(e), (name, str(e))
        else: accepted.append(name)
    assert not accepted, f'{cls.__name__} accepts negative {accepted}'

@pytest.mark.parametrize('override,message', [
    ('sft.lr=.inf', 'tiny.sft.lr: expected a finite number, got inf'),
    ('sft.lr=.nan', 'tiny.sft.lr: expected a finite number, got nan'),
    ('rl.lr=-1e-5', 'tiny.rl.lr must be > 0, got -1e-05'),
    ('baselines.sasrec.lr=-0.001', 'tiny.baselines.sasrec.lr must be > 0, got -0.001'),
    ('sid.rqvae.lr=-0.001', 'tiny.sid.rqvae.lr must be > 0, got -0.001'),
    ('seed=-1', 'seed must be >= 0, got -1'),
    ('eval.ks=[0, 5]', 'tiny.eval.ks must be >= 1, got (0, 5)'),
    ('eval.ks=[-3]', 'tiny.eval.ks must be >= 1, got (-3,)'),
    ('eval.ks=[]', 'tiny.eval.ks must name at least one cut-off K'),
    ('eval.ks=[1, 20]', 'tiny.eval.ks: K=20 is above num_beams=10'),
])
def test_bad_values_fail_before_any_work(tmp_path, capsys, override, message):
    "Refused when the config is built: exit 2, one line naming the key, and the run directory's earlier results untouched."
    from minionerec.cli import main
    run = tmp_path/'run'; (run/'sft').mkdir(parents=True); (run/'sft'/'DONE.json').write_text('{"fingerprint": "earlier"}')
    before = sorted(p.relative_to(run) for p in run.rglob('*'))
    assert main(['pipeline', '--config', 'tiny', '--run-dir', str(run), '--set', override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('minionerec: error: ') and message in err and '\n' not in err, err
    assert sorted(p.relative_to(run) for p in run.rglob('*')) == before

# ---------------------------------------------------------------- MRR at a K, never at the list length

def test_mrr_compares_lists_of_different_lengths_fairly():
    "A generative model's 20 beams and a baseline's top 50 agree on the first 20 items: every reported number agrees."
    from minionerec.evaluate import rank_metrics, results_table
    rng = np.random.default_rng(0)
    top50 = np.stack([rng.permutation(500)[:50] for _ in range(400)]); top20 = top50[:, :20]
    targets = np.where(rng.random(400) < 0.5, top50[np.arange(400), rng.integers(0, 50, 400)], 999)  # half the hits at ranks 1-50
    gen, base = rank_metrics(top20, targets), rank_metrics(top50, targets)
    shared = set(gen) & set(base)
    assert 'MRR' not in gen and 'MRR@10' in shared and 'MRR@20' in shared and 'MRR@50' not in gen
    assert all(gen[k] == base[k] for k in shared), {k: (gen[k], base[k]) for k in shared if gen[k] != base[k]}
    assert base['MRR@50'] > gen['MRR@20']            # what a list-length MRR would have compared
    assert '| MRR@10 |' in results_table({'gen': gen, 'base': base}).splitlines()[0] + ' |'

# ---------------------------------------------------------------- a full disk names the file and keeps nothing partial

def test_disk_full_names_the_file_and_keeps_nothing(tmp_path, monkeypatch):
    from minionerec.core import write_json, read_json, atomic_dir, DiskFullError
    write_json(tmp_path/'metrics.json', {'ndcg': 0.1})
    def full(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, 'fsync', full)
    with pytest.raises(DiskFullError, match=f'{tmp_path}/metrics.json: no space left on device while writing it; nothing partial was kept'):
        write_json(tmp_path/'metrics.json', {'ndcg': 0.2})
    (tmp_path/'last').mkdir(); (tmp_path/'last'/'model.safetensors').write_bytes(b'old')
    with pytest.raises(DiskFullError, match=f'{tmp_path}/last/trainer_state.json: no space left'):
        with atomic_dir(tmp_path/'last') as t:
            (t/'model.safetensors').write_bytes(b'new'); write_json(t/'trainer_state.json', {'step': 3})
    monkeypatch.undo()
    assert read_json(tmp_path/'metrics.json') == {'ndcg': 0.1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last', 'metrics.json']
    assert [p.read_bytes() for p in (tmp_path/'last').iterdir()] == [b'old']
