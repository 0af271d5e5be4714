"""Issue 24, part 1: every failure a user can meet is one line naming its file / field / row / override and its cause,
with the command that recovers where there is one; nothing is cleared before the checks pass; SIGTERM stops like Ctrl-C."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest

ENV = {**os.environ, 'OMP_WAIT_POLICY': 'PASSIVE', 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1'}
MAIN = 'import sys; from minionerec.cli import main; sys.exit(main())'

def cli(*args, pre='', timeout=600):
    "Run `minionerec ARGS` in a fresh interpreter (`pre`: python run first, e.g. a fault to inject)."
    return subprocess.run([sys.executable, '-c', pre + '\n' + MAIN, *args], capture_output=True, text=True, env=ENV, timeout=timeout)

def one_line(r, rc=2) -> str:
    "The last stderr line of a failed run, after checking it is the one error line with exit status `rc`."
    assert r.returncode == rc, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('minionerec: error: ') and 'internal error' not in r.stderr and 'Traceback' not in r.stderr, r.stderr[-3000:]
    return last.removeprefix('minionerec: error: ')

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "One uninterrupted tiny pipeline (about 30 s): the reference every case below copies or compares against."
    run = tmp_path_factory.mktemp('ref')/'run'
    r = cli('pipeline', '--config', 'tiny', '--run-dir', str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    return run

def _copy(tiny_run, dest, stages=('prepare', 'embed', 'sid', 'sft', 'evaluate', 'rl', 'report')) -> Path:
    dest.mkdir(parents=True)
    for s in stages: shutil.copytree(tiny_run/s, dest/s, symlinks=True)
    return dest

def _listing(d) -> list: return sorted((str(p.relative_to(d)), p.stat().st_size) for p in Path(d).rglob('*'))

# ---------------------------------------------------------------- a full disk inside torch / safetensors writes

TORCH_SAVE_FULL = '''
import errno, os, torch
_save = torch.save
class _Full:                          # the disk fills after 4 KiB: torch's zip writer raises a RuntimeError over the OSError
    def __init__(s, f): s.f, s.n = f, 0
    def write(s, b):
        s.n += len(b)
        if s.n > 4096: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return s.f.write(b)
    def flush(s): s.f.flush()
torch.save = lambda obj, f, *a, **k: _save(obj, _Full(f), *a, **k)
'''
SAFETENSORS_FULL = '''
import transformers.modeling_utils as mu
def _full(*a, **k): raise Exception('Error while serializing: I/O error: No space left on device (os error 28)')   # safetensors' words
mu.safe_save_file = _full
'''

@pytest.mark.parametrize('fault,file', [(TORCH_SAVE_FULL, 'last/optimizer.pt'), (SAFETENSORS_FULL, 'best/model.safetensors')],
                         ids=['optimizer', 'weights'])
def test_a_full_disk_while_sft_saves_names_the_file(tiny_run, tmp_path, fault, file):
    run = _copy(tiny_run, tmp_path/'run', ('prepare', 'embed', 'sid'))
    line = one_line(cli('sft', '--config', 'tiny', '--run-dir', str(run), pre=fault))
    assert line == (f'{run}/sft/{file}: no space left on device while writing it; nothing partial was kept '
                    f'({run}/sft/{file.split("/")[0]} is as it was before): free some space and run the same command again'), line
    assert not [p for p in (run/'sft').rglob('.*') if p.name.endswith('.tmp')]        # no temporary file or folder left

# ---------------------------------------------------------------- damaged checkpoints: the file, what is wrong, the stage to rerun

RERUN = 'rerun the sft stage that wrote it: minionerec sft --force (with the same --config and --set)'

def test_truncated_weights_on_resume_name_the_file_and_the_stage(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path/'run', ('prepare', 'embed', 'sid', 'sft'))
    (run/'sft'/'DONE.json').unlink()                                                 # sft interrupted: it resumes from last/
    os.truncate(run/'sft'/'last'/'model.safetensors', 1000)
    line = one_line(cli('sft', '--config', 'tiny', '--run-dir', str(run)))
    assert line.startswith(f'{run}/sft/last/model.safetensors: not a complete safetensors file, truncated or corrupt (') and line.endswith(RERUN), line

def test_truncated_best_checkpoint_for_evaluate_names_the_file_and_the_stage(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path/'run', ('prepare', 'embed', 'sid', 'sft'))
    os.truncate(run/'sft'/'best'/'model.safetensors', 100_000)
    line = one_line(cli('evaluate', '--config', 'tiny', '--run-dir', str(run)))
    assert line.startswith(f'{run}/sft/best/model.safetensors: not a complete safetensors file, truncated or corrupt (') and line.endswith(RERUN), line
    assert not (run/'evaluate'/'DONE.json').exists()

def test_a_missing_optimizer_state_is_named_missing(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path/'run', ('prepare', 'embed', 'sid', 'sft'))
    (run/'sft'/'DONE.json').unlink(); (run/'sft'/'last'/'optimizer.pt').unlink()
    line = one_line(cli('sft', '--config', 'tiny', '--run-dir', str(run)))
    assert line == f'{run}/sft/last/optimizer.pt: missing: the resumable checkpoint {run}/sft/last is incomplete; {RERUN}', line

# ---------------------------------------------------------------- your own events: the row of a bad time

@pytest.mark.parametrize('bad,message', [('yesterday', "expected a unix time like most rows of this column, got 'yesterday'"),
                                         ('-5', "'-5' is before 1970 (a negative unix time)")])
def test_a_bad_time_among_unix_seconds_names_its_row(tmp_path, bad, message):
    from minionerec.protocol import prepare_interactions
    from minionerec.data import DataError
    rows = [f'u{i % 4},i{i % 5},{1_700_000_000 + 86400 * i}' for i in range(24)]
    rows[16] = rows[16].rsplit(',', 1)[0] + ',' + bad                                # data row 17
    (tmp_path/'events.csv').write_text('user,item,time\n' + '\n'.join(rows) + '\n')
    (tmp_path/'items.csv').write_text('item,title\n' + ''.join(f'i{j},Item {j}\n' for j in range(5)))
    with pytest.raises(DataError) as e: prepare_interactions(tmp_path/'events.csv', tmp_path/'items.csv')
    assert str(e.value) == f"{tmp_path}/events.csv, row 17, column 'time': {message}" + ('' if bad != '-5' else ': not a timestamp of an event'), str(e.value)

# ---------------------------------------------------------------- configs: a key given twice, an override that is not YAML

def test_a_key_given_twice_and_a_broken_override_are_named(tmp_path, capsys):
    from minionerec.cli import main
    (tmp_path/'twice.yaml').write_text('preset: tiny\nsft:\n  lr: 0.001\nseed: 3\nsft:\n  epochs: 2\n')
    assert main(['config', '--config', str(tmp_path/'twice.yaml')]) == 2
    assert capsys.readouterr().err == f"minionerec: error: {tmp_path}/twice.yaml: invalid YAML at line 5, column 1: duplicate key 'sft' (first at line 2)\n"
    assert main(['config', '--config', 'tiny', '--set', 'sft.lr=[']) == 2
    err = capsys.readouterr().err
    assert err.startswith('minionerec: error: --set sft.lr=[: invalid YAML at line 1, column 2') and err.count('\n') == 1, err

# ---------------------------------------------------------------- checks before clearing: monitor, beams, symlinks

@pytest.mark.parametrize('override,message', [
    ('sft.monitor=bogus', "tiny.sft.monitor: 'bogus' is not 'all', a task (rec, title2sid"),
    ('sft.monitor=desc2sid', "sft.monitor: 'desc2sid' is not a task of the validation mixture (rec, sid_hist2title"),
    ('eval.num_beams=100000', 'tiny.eval.num_beams must be <= 1000'),
    ('eval.num_beams=999', 'eval.num_beams (999) exceeds the {n} items of {run}/sid/index.json: a ranked list holds each item once'),
])
def test_a_setting_that_cannot_run_clears_nothing(tiny_run, tmp_path, capsys, override, message):
    "A complete run directory and a setting the run cannot use: one line naming the setting, and every folder as it was."
    from minionerec.cli import main
    run = _copy(tiny_run, tmp_path/'run')
    before = _listing(run)
    n = len(json.loads((run/'sid'/'index.json').read_text()))
    assert main(['pipeline', '--config', 'tiny', '--run-dir', str(run), '--set', override]) == 2
    err = capsys.readouterr().err
    assert err.startswith('minionerec: error: ') and message.format(n=n, run=run) in err and err.count('\n') == 1, err
    assert _listing(run) == before

def test_a_stage_folder_that_is_a_symlink_is_named(tmp_path, capsys):
    from minionerec.cli import main
    (tmp_path/'elsewhere').mkdir(); (tmp_path/'run').mkdir(); os.symlink(tmp_path/'elsewhere', tmp_path/'run'/'sft')
    assert main(['pipeline', '--config', 'tiny', '--run-dir', str(tmp_path/'run')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'minionerec: error: {tmp_path}/run/sft: a symbolic link (to {tmp_path}/elsewhere) where the pipeline keeps its sft stage folder'), err
    assert sorted(os.listdir(tmp_path/'run')) == ['sft'] and os.listdir(tmp_path/'elsewhere') == []

# ---------------------------------------------------------------- data: unknown download names, several datasets in one folder

def test_download_of_an_unknown_name_says_so_and_creates_nothing(tmp_path, capsys):
    from minionerec.cli import main
    assert main(['download', 'Industrial', '--dest', str(tmp_path/'data')]) == 2
    err = capsys.readouterr().err
    assert err == ("minionerec: error: unknown dataset 'Industrial': the public MiniOneRec data has industrial (Industrial_and_Scientific), "
                   'office (Office_Products); another mirror with the same layout: base_url (--base-url)\n'), err
    assert not (tmp_path/'data').exists()

def test_several_datasets_in_one_folder_point_at_data_name(tmp_path):
    from minionerec.data import write_published
    from minionerec.synthetic import make_synthetic, SyntheticConfig
    for name in ('Toys', 'Tools'): write_published(make_synthetic(SyntheticConfig.tiny().replace(n_users=40, name=name)), tmp_path/'data')
    line = one_line(cli('prepare', '--config', 'tiny', '--run-dir', str(tmp_path/'run'), '--set', 'data.source=published',
                        '--set', f'data.path={tmp_path/"data"}'))
    assert line == f"{tmp_path}/data/Amazon: several datasets ['Tools', 'Toys']: choose one with data.name (Python: name=)", line

# ---------------------------------------------------------------- SIGTERM, as a scheduler sends it

def test_sigterm_stops_like_ctrl_c_and_the_rerun_is_identical(tiny_run, tmp_path):
    run = tmp_path/'run'
    p = subprocess.Popen([sys.executable, '-c', MAIN, 'pipeline', '--config', 'tiny', '--run-dir', str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, 'PYTHONUNBUFFERED': '1'},
                         preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    lines = []
    for line in p.stderr:                                  # stop SFT in the middle of its training
        lines.append(line)
        if 'sft: running' in line: break
    time.sleep(1); p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60); rest = p.stderr.read()
    assert rc == 143, ''.join(lines) + rest
    assert rest.strip().splitlines()[-1] == 'minionerec: stopped (SIGTERM); run the same command again to resume', rest
    assert 'Traceback' not in rest and not (run/'.minionerec.lock').exists()
    assert not (run/'report'/'DONE.json').exists()
    r = cli('pipeline', '--config', 'tiny', '--run-dir', str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ('sft/best/model.safetensors', 'evaluate/ranks.csv', 'rl/ranks.csv', 'rl/checkpoint/model.safetensors'):
        assert (run/f).read_bytes() == (tiny_run/f).read_bytes(), f
    strip = lambda d: {k: {m: v for m, v in r.items() if m not in ('seconds', 'train_s', 'rank_s')} for k, r in d.items()}   # wall times aside
    assert strip(json.loads((run/'evaluate'/'metrics.json').read_text())) == strip(json.loads((tiny_run/'evaluate'/'metrics.json').read_text()))
