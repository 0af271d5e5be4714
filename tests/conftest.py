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
