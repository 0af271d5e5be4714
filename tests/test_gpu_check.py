"""bench/gpu_check.sh in its CPU tiny mode: the same phases as on a GPU (SFT, GRPO, evaluation vs the per-beam reference
processor) run end to end in seconds and report their numbers."""
import json, os, subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def test_gpu_check_tiny(tmp_path):
    env = {**os.environ, 'OUT': str(tmp_path), 'OMP_NUM_THREADS': '1', 'MINIONEREC_QUIET': '1'}
    r = subprocess.run(['bash', str(REPO/'bench'/'gpu_check.sh'), '--tiny'], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'gpu_check: done in' in r.stdout
    sft, grpo, ev = (json.loads((tmp_path/f'{p}.json').read_text()) for p in ('sft', 'grpo', 'eval'))
    assert sft['steps'] == sft['updates'] == 2 and sft['tokens_per_s'] > 0 and sft['master_weights'] == 'float32'
    assert grpo['steps'] == 2 and grpo['groups_per_step'] == 4 and grpo['kl_last'] > 0        # the policy moved
    assert grpo['rollout_logits'] == 'bfloat16'                      # rollouts and validation under bf16 autocast, as training
    resume = json.loads((tmp_path/'resume.json').read_text())
    assert resume['resumed'] and resume['steps'] == 3, resume       # the SFT run continued from `last` for one more step
    assert ev['users'] == 16 and ev['invalid'] == 0 and ev['same_items_share'] == 1.0        # our search == the reference's items
    assert ev['ours_ms_per_user'] > 0 and ev['generate_per_beam_ms_per_user'] > 0
