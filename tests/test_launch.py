"""The documented GPU-server launch runs as written (issue 23): every `accelerate launch` line of the README, the
Dockerfile, the chapters and the configs is one of two shapes (DDP or DeepSpeed ZeRO-2, the whole pipeline), and each
shape runs here from a folder outside the checkout with the installed wheel, changing only the process count (2), the
backend (gloo on CPU: `tests/ds_cpu_shim` for DeepSpeed, which accelerate starts only on a GPU-like device) and the
config (the tiny preset instead of the paper's; the run directory under the test's folder)."""
import json, os, re, shlex, shutil, socket, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ['README.md', 'Dockerfile', 'configs/paper.yaml', 'configs/accelerate_8gpu.yaml', 'configs/accelerate_zero2_8gpu.yaml',
        *sorted(str(p.relative_to(REPO)) for p in (REPO/'nbs').glob('*.ipynb'))]
SHAPE = re.compile(r'accelerate launch --config_file "\$\(minionerec launch-config (accelerate_8gpu|accelerate_zero2_8gpu)\)" '
                   r'-m minionerec pipeline --config (\S+)$')

def doc_text(rel:str) -> str:
    p = REPO/rel
    if p.suffix != '.ipynb': return p.read_text(encoding='utf-8')
    return '\n'.join(''.join(c['source']) for c in json.loads(p.read_text(encoding='utf-8'))['cells'])

def launch_lines() -> dict:
    "{file: [launch lines]}: every line that runs `accelerate launch --config_file ...`, comment marks and quotes stripped."
    out = {}
    for rel in DOCS:
        for line in doc_text(rel).splitlines():
            s = line.strip().lstrip('#').strip().strip("'")
            if s.startswith('accelerate launch --'): out.setdefault(rel, []).append(re.sub(r'\s+#.*$', '', s).strip())
    return out

def test_documented_launch_lines_have_the_tested_shape():
    lines = launch_lines()
    for rel in ('README.md', 'Dockerfile', 'nbs/13b_presets.ipynb', 'configs/paper.yaml'): assert lines.get(rel), f'{rel}: no launch line'
    bad = [(rel, l) for rel, ls in lines.items() for l in ls if not SHAPE.match(l)]
    assert not bad, f'launch lines this test does not run: {bad}'
    assert {SHAPE.match(l)[1] for ls in lines.values() for l in ls} == {'accelerate_8gpu', 'accelerate_zero2_8gpu'}

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def outside(wheel, tmp_path_factory):
    "A folder outside the checkout, the wheel installed in `site`, and a `minionerec` on PATH that runs the installed copy."
    root = tmp_path_factory.mktemp('outside'); site, bin_ = root/'site', root/'bin'
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    bin_.mkdir(); (bin_/'minionerec').write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m minionerec "$@"\n'); (bin_/'minionerec').chmod(0o755)
    env = {**os.environ, 'PATH': f'{bin_}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}', 'PYTHONPATH': str(site),
           'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    env.pop('ACCELERATE_USE_DEEPSPEED', None); env.pop('ACCELERATE_DEEPSPEED_CONFIG_FILE', None)
    work = root/'work'; work.mkdir()
    where = subprocess.run(['minionerec', 'launch-config', 'accelerate_zero2_8gpu'], cwd=work, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(site)), where     # the packaged file, not the checkout's
    return work, env

def run_line(line:str, work:Path, env:dict, run_dir:Path):
    "The documented line on 2 CPU processes with the tiny preset in `run_dir`, by bash (for the `$(...)`), from `work`."
    cfg, _ = SHAPE.match(line)[1], SHAPE.match(line)[2]
    cmd = line.replace('accelerate launch ', f'accelerate launch --num_processes 2 --main_process_port {_free_port()} ', 1)
    cmd = re.sub(r'--config \S+$', f'--config tiny --run-dir {shlex.quote(str(run_dir))}', cmd)
    if cfg == 'accelerate_zero2_8gpu': env = {**env, 'PYTHONPATH': f"{REPO/'tests'/'ds_cpu_shim'}{os.pathsep}{env['PYTHONPATH']}"}
    return subprocess.run(['bash', '-c', cmd], cwd=work, env=env, capture_output=True, text=True, timeout=900)

def unique_line(config:str) -> str:
    return next(l for ls in launch_lines().values() for l in ls if SHAPE.match(l)[1] == config)

def check_run(r, run_dir:Path, engine:str):
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    assert f"report: {run_dir/'report'/'report.md'}" in r.stdout
    for s in ('prepare', 'embed', 'sid', 'sft', 'evaluate', 'rl', 'report'): assert (run_dir/s/'DONE.json').exists(), s
    res = json.loads((run_dir/'sft'/'sft_result.json').read_text())
    assert res['plan']['engine'] == engine and len(res['first_step_shards']) == 2        # 2 processes, each its own shard
    launches = {json.loads((run_dir/s/'DONE.json').read_text()).get('launch') for s in ('sft', 'evaluate', 'rl', 'report')}
    assert len(launches) == 1 and None not in launches                                   # written by this launch (its token)
    metrics = json.loads((run_dir/'evaluate'/'metrics.json').read_text())['MiniOneRec SFT']
    assert metrics['rows'] > 0 and metrics['invalid'] == 0

@pytest.fixture(scope='module')
def ddp_run(outside):
    work, env = outside
    run_dir = work/'runs'/'ddp'
    return run_line(unique_line('accelerate_8gpu'), work, env, run_dir), run_dir

def test_ddp_launch_line_runs_outside_the_checkout(ddp_run):
    r, run_dir = ddp_run
    check_run(r, run_dir, 'ddp')
    tokens = {json.loads((run_dir/s/'DONE.json').read_text()).get('launch') for s in ('prepare', 'embed', 'sid', 'sft', 'report')}
    assert len(tokens) == 1 and None not in tokens                                       # every stage of this one launch
    assert 'prepare: runs in the main process; waiting for it' in r.stderr               # rank 1 waited (later stages: if not done yet)

def test_zero2_launch_line_runs_outside_the_checkout(ddp_run, outside):
    """The ZeRO-2 line: the YAML names `configs/deepspeed_zero2.json`, which is not in this folder; the packaged one is read.
    The data, embedding and SID stages are copied from the DDP run (the same config), so the launch resumes at sft."""
    pytest.importorskip('deepspeed')
    work, env = outside
    assert not (work/'configs').exists()
    run_dir = work/'runs'/'zero2'
    for s in ('prepare', 'embed', 'sid'): shutil.copytree(ddp_run[1]/s, run_dir/s)
    r = run_line(unique_line('accelerate_zero2_8gpu'), work, env, run_dir)
    check_run(r, run_dir, 'deepspeed')
    assert 'sid: complete, skipped' in r.stderr
