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
    ('baselines.workers=0', 'tiny.baselines.workers must be >= 1, got 0'),
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

# ---------------------------------------------------------------- the run directory: owned folders, owned files, one run at a time

def _prepare(run, *extra, cwd=None):
    return cli('prepare', '--config', 'tiny', '--run-dir', str(run), *extra, cwd=cwd, timeout=300)

def test_force_never_deletes_a_folder_the_pipeline_did_not_write(tmp_path):
    run = tmp_path/'run'; (run/'prepare').mkdir(parents=True); (run/'prepare'/'notes.txt').write_text('my notes\n')
    for extra in (('--force',), ()):
        r = _prepare(run, *extra)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip() == (f'minionerec: error: {run}/prepare: this folder was not written by minionerec (it has no STARTED.json '
                                    'or DONE.json), so it is neither cleared nor written into: move it away or use another --run-dir'), r.stderr
        assert (run/'prepare'/'notes.txt').read_text() == 'my notes\n' and sorted(os.listdir(run/'prepare')) == ['notes.txt']
    r = _prepare(run.parent/'fresh')                     # the pipeline's own folder is cleared by --force (and only it)
    assert r.returncode == 0, r.stderr[-2000:]
    (run.parent/'fresh'/'prepare'/'extra.txt').write_text('x')
    r = _prepare(run.parent/'fresh', '--force')
    assert r.returncode == 0 and 'prepare: clearing' in r.stderr and not (run.parent/'fresh'/'prepare'/'extra.txt').exists(), r.stderr[-2000:]

def test_the_users_config_file_is_never_overwritten(tmp_path):
    user = '# my run\npreset: tiny\nstages: [prepare]\n'
    (tmp_path/'config.yaml').write_text(user)
    r = cli('pipeline', '--config', 'config.yaml', '--run-dir', '.', cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path/'config.yaml').read_text() == user
    resolved = (tmp_path/'resolved_config.yaml').read_text()
    assert resolved.startswith('# written by minionerec') and 'stages:\n- prepare\n' in resolved
    (tmp_path/'resolved_config.yaml').write_text('# mine now\n')          # a file of that name the pipeline did not write
    r = cli('pipeline', '--config', 'config.yaml', '--run-dir', '.', cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and (tmp_path/'resolved_config.yaml').read_text() == '# mine now\n'
    assert 'resolved_config.yaml: this file was not written by minionerec' in r.stderr, r.stderr[-2000:]

HOLD = ('import sys, time; from pathlib import Path; from minionerec.rundir import run_lock\n'
        'with run_lock(sys.argv[1]):\n    print("held", flush=True)\n    while not Path(sys.argv[2]).exists(): time.sleep(0.1)')

def test_a_second_run_on_the_same_run_dir_fails_at_once_or_waits(tmp_path):
    import socket
    run, release = tmp_path/'run', tmp_path/'release'
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(run), str(release)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == 'held'
        r = _prepare(run)
        assert r.returncode == 2 and not (run/'prepare').exists(), r.stderr[-2000:]
        line = r.stderr.strip()
        assert '\n' not in line and line.startswith(f'minionerec: error: {run} is in use by another minionerec run (pid {holder.pid} on '
                                                  f'{socket.gethostname()}, started 20'), line
        assert line.endswith('; wait for it to finish, pass --wait to start when it does, or use another --run-dir'), line
        code = 'import sys; from minionerec.cli import main; sys.exit(main())'
        waiter = subprocess.Popen([sys.executable, '-c', code, 'prepare', '--config', 'tiny', '--run-dir', str(run), '--wait'],
                                  stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
        first = waiter.stderr.readline()                 # it queues behind the holder ...
        assert 'is in use (pid' in first and 'waiting for it to finish' in first, first
        assert not (run/'prepare').exists()
        release.touch()                                  # ... and runs once the holder is done
        out, err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0 and (run/'prepare'/'DONE.json').exists(), err[-2000:]
    finally: holder.kill(); holder.wait()

def test_a_stale_lock_is_taken_over(tmp_path):
    import socket
    run = tmp_path/'run'; run.mkdir()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    (run/'.minionerec.lock').write_text(json.dumps({'pid': int(dead), 'host': socket.gethostname(), 'started': '2020-01-01 00:00:00'}))
    r = _prepare(run)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'taking over the lock left by pid {dead} on {socket.gethostname()}, started 2020-01-01 00:00:00 (that process is gone)' in r.stderr
    assert not (run/'.minionerec.lock').exists()

def test_a_stage_cleans_leftovers_of_killed_writes(tmp_path):
    run = tmp_path/'run'
    assert _prepare(run).returncode == 0
    left = [run/'prepare'/'.data.k3j4h5g6.tmp', run/'prepare'/'.data.old.999999', run/'prepare'/'.dataset_report.json.a1b2c3d4.tmp']
    left[0].mkdir(); (left[0]/'train.csv').write_text('half'); left[1].mkdir(); left[2].write_text('{"half')
    r = _prepare(run)                                     # complete: skipped, but its leftovers go
    assert r.returncode == 0 and 'prepare: complete, skipped' in r.stderr, r.stderr[-2000:]
    assert not any(p.exists() for p in left) and r.stderr.count('leftover of an interrupted write') == 3

# ---------------------------------------------------------------- the CLI: one line per user error, --debug, Ctrl-C

@pytest.mark.parametrize('name,content,message', [
    ('tabs.yaml', 'preset: tiny\nsft:\n\tlr: 1\n', "tabs.yaml: invalid YAML at line 3, column 1: while scanning for the next token; found character '\\t' that cannot start any token (YAML indents with spaces, not tabs)"),
    ('broken.yaml', 'preset: tiny\neval: {ks: [1, 3}\n', 'broken.yaml: invalid YAML at line 2'),
    ('latin.yaml', '# caf\xe9\npreset: tiny\n'.encode('latin-1'), 'latin.yaml: not UTF-8 text at byte offset 5 (byte 0xe9)'),
    ('folder', None, 'folder: is a folder, expected a file'),
    ('list.yaml', '- preset: tiny\n', 'list.yaml: expected a mapping at the top level'),
])
def test_config_file_errors_name_the_file(tmp_path, capsys, name, content, message):
    from minionerec.cli import main
    p = tmp_path/name
    if content is None: p.mkdir()
    elif isinstance(content, bytes): p.write_bytes(content)
    else: p.write_text(content)
    assert main(['config', '--config', str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'minionerec: error: {tmp_path}/{message}') and err.count('\n') == 1, err

def test_os_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    (tmp_path/'file').write_text('x')
    r = _prepare(tmp_path/'file'/'run')                  # the run directory cannot be made under a file
    assert r.returncode == 2 and r.stderr.startswith('minionerec: error: ') and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f'{tmp_path}/file' in r.stderr
    r = _prepare(tmp_path/'file'/'run', '--debug')
    assert r.returncode == 2 and 'Traceback (most recent call last)' in r.stderr and r.stderr.strip().splitlines()[-1].startswith('minionerec: error: ')

def test_an_internal_error_is_one_line_pointing_at_debug(tmp_path):
    pre = 'import minionerec.pipeline as P\ndef boom(*a, **k): raise KeyError("surprise")\nP.STAGE["prepare"].run = boom'
    r = cli('prepare', '--config', 'tiny', '--run-dir', str(tmp_path/'run'), pre=pre, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last == "minionerec: internal error: KeyError: 'surprise' (a bug: rerun with --debug for the traceback and report it)", r.stderr
    assert 'Traceback' not in r.stderr

def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    code = 'import sys; from minionerec.cli import main; sys.exit(main())'
    p = subprocess.Popen([sys.executable, '-c', code, 'pipeline', '--config', 'tiny', '--run-dir', str(tmp_path/'run')],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, 'PYTHONUNBUFFERED': '1'},
                         # a terminal's Ctrl-C: SIGINT at its default (a background job of a non-interactive shell, as CI
                         # scripts run it, inherits SIGINT ignored, and the test would not be testing anything)
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in p.stderr:                                 # interrupt SFT in the middle of its training
        lines.append(line)
        if 'minionerec.sft' in line or 'sft: running' in line: break
    time.sleep(2); p.send_signal(signal.SIGINT)
    try: rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:                     # the first one landed in a finalizer (Python ignores it there)
        p.send_signal(signal.SIGINT); rc = p.wait(timeout=30)
    rest = p.stderr.read()
    assert rc == 130, ''.join(lines) + rest
    last = rest.strip().splitlines()[-1]
    assert 'Traceback' not in rest.split('KeyboardInterrupt')[-1] and last.startswith('minionerec: interrupted'), rest
    assert not (tmp_path/'run'/'.minionerec.lock').exists() or 'again' in last   # released (a second Ctrl-C leaves it to the next run)

# ---------------------------------------------------------------- divergence stops training; no progress is said loudly

class _Lines(list):
    "Collect the project's log lines (its logger does not propagate to pytest's caplog)."
    def __enter__(self):
        import logging
        self.h = logging.Handler(); self.h.emit = lambda r: self.append(r.getMessage())
        logging.getLogger('minionerec').addHandler(self.h); return self
    def __exit__(self, *a):
        import logging; logging.getLogger('minionerec').removeHandler(self.h)

@pytest.fixture(scope='module')
def toy_sft():
    import torch
    from minionerec.sft import toy_examples
    torch.set_num_threads(1)
    ex, index, titles = toy_examples(24)
    return ex, index, [e['prompt'] for e in ex] + titles

def _sft(toy_sft, out, lr):
    from minionerec.sft import SFTConfig, toy_backbone, train_sft
    ex, index, texts = toy_sft
    model, tok, _ = toy_backbone(index, texts, seed=0)
    cfg = SFTConfig.tiny().replace(lr=lr, epochs=3, patience=0, global_batch_size=8, micro_batch_size=4, save_every=1)
    return train_sft(cfg, model, tok, ex, ex, out_dir=out)

def test_sft_divergence_stops_naming_the_step(toy_sft, tmp_path):
    import torch
    from minionerec.train import DivergenceError
    from minionerec.sft import toy_backbone
    from minionerec.model import load_weights
    with pytest.raises(DivergenceError, match=r'sft: the training loss is nan at step 2 \(learning rate 1e\+30\): the weights diverged, '
                                              r'so training stopped before saving them; lower sft.lr'):
        _sft(toy_sft, tmp_path, lr=1e30)
    model = toy_backbone(toy_sft[1], toy_sft[2], seed=0)[0]
    load_weights(model, tmp_path/'last')                 # what was saved holds finite weights
    assert all(torch.isfinite(p).all() for p in model.parameters())

def test_sft_that_never_beats_its_start_says_so(toy_sft, tmp_path):
    with _Lines() as lines: res = _sft(toy_sft, tmp_path, lr=5.0)
    assert res.best_step == 0 and res.steps == 9
    assert any(l.startswith('SFT NEVER BEAT ITS STARTING POINT') for l in lines), lines
    from minionerec.pipeline import RunContext
    from minionerec.compare import stage_report
    from minionerec.presets import preset
    from minionerec.core import write_json
    run = tmp_path/'run'
    write_json(run/'sft'/'DONE.json', {'stage': 'sft', 'seconds': 1.0, 'metrics': {'steps': 9, 'best_step': 0, 'monitor': 'rec'}})
    stage_report(RunContext(preset('tiny').replace(run_dir=str(run))), run/'report')
    assert '**Warning: SFT never beat its starting point.** The best validation rec is the untrained model' in (run/'report'/'report.md').read_text()

@pytest.fixture(scope='module')
def rl_world(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from dist_runs import grpo_world
    return grpo_world(tmp_path_factory.mktemp('rl'))

def test_grpo_divergence_stops_naming_the_step(rl_world, tmp_path):
    from dist_runs import grpo_run
    from minionerec.train import DivergenceError
    with pytest.raises(DivergenceError, match=r'rl: at step 2 the policy scores every candidate of a prompt as -inf or NaN .*lower rl.lr'):
        grpo_run(rl_world, tmp_path, lr=1e30, max_steps=3)
    assert not (tmp_path/'checkpoint').exists()

def test_grpo_that_never_beats_sft_says_so(rl_world, tmp_path):
    from dist_runs import grpo_run
    with _Lines() as lines: res = grpo_run(rl_world, tmp_path, lr=1e-12, keep_best=True, eval_every=1)
    assert res.best_step == 0
    assert any(l.startswith('GRPO NEVER BEAT ITS STARTING POINT') for l in lines), lines
