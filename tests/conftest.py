"""Shared pytest fixtures: the real Amazon benchmark (skipped when absent), quiet progress, passive OpenMP."""
import os
from pathlib import Path
import pytest

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
os.environ.setdefault('MINIONEREC_QUIET', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

REPO = Path(__file__).resolve().parents[1]

def real_data_root():
    "The published-layout folder holding `Amazon/`: $MINIONEREC_DATA, else ../shared/data next to the repo."
    for p in (os.environ.get('MINIONEREC_DATA'), REPO.parent/'shared'/'data'):
        if p and (Path(p)/'Amazon').is_dir(): return Path(p)
    return None

@pytest.fixture(scope='session')
def amazon_root():
    root = real_data_root()
    if root is None:
        pytest.skip('real Amazon 2018 data not found: set $MINIONEREC_DATA to a folder holding Amazon/ '
                    '(the public MiniOneRec data layout) or place it at ../shared/data')
    return root


@pytest.fixture(scope='session')
def wheel(tmp_path_factory):
    "A wheel built from the checkout's files (tracked and new, not ignored ones), like `pip wheel .` in a fresh clone."
    import shutil, subprocess, sys
    tmp = tmp_path_factory.mktemp('wheel'); src = tmp/'src'
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=REPO, capture_output=True, text=True, check=True).stdout.split('\n')
    for f in filter(None, files):
        if (REPO/f).is_file(): (src/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(REPO/f, src/f)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp/'dist')],
                       cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return next((tmp/'dist').glob('minionerec-*.whl'))
