"""Faults anywhere (issue 24): a CI-sized seeded sample of the fault-injection and corruption sweeps of tests/faults.py
on the tiny preset (the full sweep is bench/faults.py). About 3 minutes of CPU: one counting reference run, one fault
of each kind at a seeded (stage, k-th write), two seeded corruptions."""
import re
import pytest
from faults import Sweep, STAGES, KINDS, sample

# Findings the sweeps report that are known and open, so they do not fail CI; each names where it is tracked.
# A finding not matched here fails the test; a fixed one simply stops matching (remove its line then).
KNOWN_OPEN = [
    (r'^SIGTERM stopped the run without a line', 'issue 24 section 1 (SIGTERM, as a scheduler sends it): not handled yet'),
    (r'"internal error" for a (disk-full|I/O-error) fault: .*SafetensorError', 'found by this sweep: a failed write inside safetensors '
     "save_file is not translated into a one-line disk / I/O error naming the file"),
    (r'"internal error" for a (disk-full|I/O-error) fault: .*Exception: .*os error', 'found by this sweep: a failed tokenizer.json write '
     '(tokenizers Rust writer) is not translated into a one-line disk / I/O error naming the file'),
    (r'^the last line names the temporary file, not the artifact', 'found by this sweep: an I/O error (not a full disk) '
     'inside core.atomic_write is re-raised with the name of its temporary .NAME.xxxxxxxx.tmp file, which is gone by then'),
    (r'^a temporary file left in the cache after the rerun', 'found by this sweep: a kill while embed writes its cache entry '
     'leaves .NAME.xxxxxxxx.tmp in the cache folder, and clean_leftovers only visits stage folders'),
    (r'SafetensorError', 'issue 24 section 1: a truncated model.safetensors gives internal error: SafetensorError'),
]

def open_findings(findings):
    return [f for f in findings if not any(re.search(p, f) for p, _ in KNOWN_OPEN)]

@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
    s = Sweep(tmp_path_factory.mktemp('faults'))
    s.reference()
    return s

def test_the_counting_run_sees_every_stage_and_the_compiled_writers(sweep):
    counts = sweep.counts()
    assert set(STAGES) <= set(counts) and all(counts[s] > 0 for s in STAGES), counts
    ops = {w['op'] for w in sweep.writes}
    assert {'open', 'os.replace', 'torch.save', 'safetensors.save_file', 'tokenizer.save'} <= ops, ops
    print(counts, sorted(ops))

def _trials(sweep, seed=24):
    "One trial per fault kind, each at a seeded stage and k-th write of it (every stage equally likely)."
    counts, rng, out = sweep.counts(), __import__('random').Random(seed), []
    for kind in KINDS:
        stage = rng.choice(STAGES); out.append((stage, rng.randint(1, counts[stage]), kind))
    return out

@pytest.mark.parametrize('i', range(len(KINDS)))
def test_a_fault_at_a_seeded_write_reruns_to_the_identical_result(sweep, i):
    stage, k, kind = _trials(sweep)[i]
    r = sweep.trial(stage, k, kind)
    print(r)
    assert r['fired'], r
    assert r['rerun_rc'] == 0 and r['identical'], r                     # (a) the rerun equals an uninterrupted run
    assert not r['outside'] and not r['cache'], r                        # (b) only the run folder and complete cache entries
    assert not r['leftovers'], r                                         # (c) no temporary files left
    if kind in ('enospc', 'eio') and r['stopped']:                       # (d) one line naming the file and the cause
        assert r['one_line'] and (r['internal'] or r['named']), r
    assert not open_findings(r['findings']), r

def _corruptions(sweep, seed=24):
    return [(rel, reopen, mode) for (rel, reopen), mode in zip(sample(sweep.targets(), 2, seed), ('truncate', 'garble'))]

@pytest.mark.parametrize('i', range(2))
def test_a_corrupted_artifact_is_named_or_rebuilt(sweep, i):
    rel, reopen, mode = _corruptions(sweep)[i]
    r = sweep.corrupt(rel, reopen, mode)
    print(r)
    assert r['outcome'] in ('rebuilt, identical', 'named with a hint', 'named', 'left in place, not read', 'unclear message'), r
    assert r['outcome'] != 'finished with different results', r
    assert not open_findings(r['findings']), r
