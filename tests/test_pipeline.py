"""The `minionerec` console script end to end (tiny preset), reruns that skip, and configs rejected before any work."""
import json, os, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]

def cli(*args, cwd=None, timeout=900):
    env = {**os.environ, 'OMP_WAIT_POLICY': 'PASSIVE', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1'}
    return subprocess.run([sys.executable, '-c', 'import sys; from minionerec.cli import main; sys.exit(main())', *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp('pipe')/'run'
    r = cli('pipeline', '--config', 'tiny', '--run-dir', str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r

def test_pipeline_writes_every_stage(tiny_run):
    run, r = tiny_run
    assert f'report: {run}/report/report.md' in r.stdout
    for stage in ('prepare', 'embed', 'sid', 'sft', 'evaluate', 'report'):
        assert (run/stage/'DONE.json').exists(), stage
    metrics = json.loads((run/'evaluate'/'metrics.json').read_text())
    assert {'MiniOneRec SFT', 'Popularity', 'SASRec'} <= set(metrics)
    gen = metrics['MiniOneRec SFT']
    assert gen['invalid'] == 0 and gen['duplicates'] == 0 and gen['rows'] > 0
    assert all(m['rows'] == gen['rows'] for m in metrics.values())   # same rows for every model
    assert json.loads((run/'sid'/'DONE.json').read_text())['metrics']['colliding_items_after'] == 0
    report = (run/'report'/'report.md').read_text()
    assert 'SASRec' in report and 'Popularity' in report
    assert (run/'resolved_config.yaml').read_text().startswith('# written by minionerec')
    # the rl stage puts SFT and SFT+RL side by side on validation and test, with a paired bootstrap and reward plots
    comp = json.loads((run/'rl'/'comparison.json').read_text())
    assert set(comp['splits']) == {'valid', 'test'}
    for sp, models in comp['splits'].items():
        assert set(models) == {'MiniOneRec SFT', 'MiniOneRec SFT+RL'} and len({m['rows'] for m in models.values()}) == 1
        b = comp['bootstrap'][sp][0]
        assert b['metric'] == 'NDCG@10' and b['lo'] <= b['delta'] <= b['hi']
        assert abs(b['a'] - models['MiniOneRec SFT']['NDCG@10']) < 1e-9 and abs(b['b'] - models['MiniOneRec SFT+RL']['NDCG@10']) < 1e-9
    # the SFT row of the rl stage is the evaluate stage's (same rows, deterministic beams)
    assert abs(comp['splits']['test']['MiniOneRec SFT']['NDCG@10'] - gen['NDCG@10']) < 1e-9
    assert (run/'rl'/'reward_distributions.png').stat().st_size > 0 and 'SFT vs SFT+RL' in report

def test_rerun_skips_complete_stages(tiny_run):
    run, _ = tiny_run
    before = {s: (run/s/'DONE.json').read_text() for s in ('prepare', 'embed', 'sid', 'sft', 'evaluate')}
    r = cli('pipeline', '--config', 'tiny', '--run-dir', str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'sft: complete, skipped' in r.stderr
    assert before == {s: (run/s/'DONE.json').read_text() for s in before}

def test_changed_config_reruns_stage_from_scratch(tiny_run, tmp_path):
    import shutil
    run, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(run, copy)
    r = cli('sft', '--config', 'tiny', '--run-dir', str(copy), '--set', 'sft.max_length=96')   # 'last' of another config exists
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'sft: clearing' in r.stderr
    started, done = (json.loads((copy/'sft'/f).read_text()) for f in ('STARTED.json', 'DONE.json'))
    assert started['fingerprint'] == done['fingerprint']

def test_sft_of_another_sid_index_is_refused(tiny_run, tmp_path):
    import shutil
    run, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(run, copy)
    r = cli('sid', '--config', 'tiny', '--run-dir', str(copy), '--set', 'sid.rqvae.seed=7')
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli('evaluate', '--config', 'tiny', '--run-dir', str(copy), '--set', 'sid.rqvae.seed=7')
    assert r.returncode == 2 and 'trained for another SID index' in r.stderr, r.stderr[-2000:]

def test_single_stage_needs_upstream(tmp_path):
    r = cli('sft', '--config', 'tiny', '--run-dir', str(tmp_path/'fresh'))
    assert r.returncode == 2 and "stage 'sft' needs 'prepare'" in r.stderr

@pytest.mark.parametrize('override,message', [
    ('sft.learning_rate=1', "unknown key 'learning_rate'"),
    ('sft.epochs=1.5', 'sft.epochs: expected an integer'),
    ('sft.global_batch_size=10', 'global_batch_size'),
    ('data.source=published', None),
])
def test_bad_config_fails_before_work(tmp_path, override, message):
    run = tmp_path/'run'
    extra = ['--set', 'data.path=/no/such/folder'] if override.startswith('data.') else []
    r = cli('pipeline', '--config', 'tiny', '--run-dir', str(run), '--set', override, *extra)
    assert r.returncode == 2, r.stderr[-2000:]
    assert (message or '/no/such/folder') in r.stderr
    assert not (run/'prepare').exists()

def test_yaml_config_with_preset_and_plan(tmp_path):
    cfg = tmp_path/'c.yaml'; cfg.write_text('preset: paper\nsft:\n  micro_batch_size: 4\n')
    r = cli('plan', '--config', str(cfg), '--world-size', '8')
    assert r.returncode == 0, r.stderr
    assert 'gradient_accumulation: 32' in r.stdout and 'global_batch: 1024' in r.stdout
    r = cli('plan', '--config', str(cfg), '--world-size', '3')
    assert r.returncode == 2 and 'world size 3' in r.stderr
    bad = tmp_path/'bad.yaml'; bad.write_text('preset: demo\nsft: {lr: [1, 2]}\n')
    r = cli('config', '--config', str(bad))
    assert r.returncode == 2 and 'sft.lr' in r.stderr

def test_shipped_configs_load():
    shipped = [p for p in (REPO/'configs').glob('*.yaml') if not p.name.startswith('accelerate')]
    assert {p.name for p in shipped} >= {'demo.yaml', 'industrial.yaml', 'paper.yaml'}
    for p in shipped:
        r = cli('config', '--config', str(p))
        assert r.returncode == 0, (p, r.stderr)

def test_sft_stage_under_torchrun_two_processes(tiny_run, tmp_path):
    import shutil
    run, _ = tiny_run
    copy = tmp_path/'run2'; shutil.copytree(run, copy)
    env = {**os.environ, 'OMP_WAIT_POLICY': 'PASSIVE', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(['torchrun', '--nproc_per_node', '2', '--master_port', '29533', '-m', 'minionerec.cli', 'sft',
                        '--config', 'tiny', '--run-dir', str(copy), '--force'], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads((copy/'sft'/'DONE.json').read_text())
    assert done['metrics']['steps'] > 0 and (copy/'sft'/done['metrics']['checkpoint']/'config.json').exists()
    r = cli('evaluate', '--config', 'tiny', '--run-dir', str(copy), '--force')      # the 2-process checkpoint evaluates
    assert r.returncode == 0, r.stderr[-3000:]
    # single-process stages under a multi-process launch run on rank 0 while the others wait: tests/test_launch.py

def _free_port() -> int:
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_evaluate_and_rl_stages_under_torchrun_match_one_process(tiny_run, tmp_path):
    """`torchrun --nproc_per_node 2 -m minionerec.cli evaluate` (and `rl`): each process decodes a block of the users on its
    device, the lists are gathered, and the metrics equal the one-process run's; the rl stage's SFT rows too."""
    import shutil
    run, _ = tiny_run
    copy = tmp_path/'run2'; shutil.copytree(run, copy)
    env = {**os.environ, 'OMP_WAIT_POLICY': 'PASSIVE', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1', 'OMP_NUM_THREADS': '1'}
    for stage in ('evaluate', 'rl'):
        r = subprocess.run(['torchrun', '--nproc_per_node', '2', '--master_port', str(_free_port()), '-m', 'minionerec.cli', stage,
                            '--config', 'tiny', '--run-dir', str(copy), '--force'], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = (json.loads((d/'evaluate'/'metrics.json').read_text()) for d in (run, copy))
    TIMES = ('seconds', 'train_s', 'rank_s')                            # wall times differ; everything else must not
    assert set(one) == set(two) and one['MiniOneRec SFT']['rows'] > 8
    for name in one:
        assert {k: v for k, v in one[name].items() if k not in TIMES} == {k: v for k, v in two[name].items() if k not in TIMES}, name
    c1, c2 = (json.loads((d/'rl'/'comparison.json').read_text()) for d in (run, copy))
    for sp in c1['splits']:
        a, b = c1['splits'][sp]['MiniOneRec SFT'], c2['splits'][sp]['MiniOneRec SFT']
        assert {k: v for k, v in a.items() if k not in TIMES} == {k: v for k, v in b.items() if k not in TIMES}, sp
        assert c2['splits'][sp]['MiniOneRec SFT+RL']['rows'] == a['rows']

def test_demo_yaml_is_the_demo_preset():
    "configs/demo.yaml (the README's main job) spells out every key: it must stay equal to the preset it documents."
    from minionerec.presets import load_config, preset
    assert load_config(str(REPO/'configs'/'demo.yaml')) == preset('demo'), 'regenerate: minionerec config --config demo'

def test_sft_selects_on_validation_ndcg(tiny_run, tmp_path):
    "`sft.monitor: NDCG@10` decodes `select_users` validation rows at each validation and keeps the checkpoint with the best NDCG@10."
    import shutil
    import pandas as pd
    run, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(run, copy)
    r = cli('sft', '--config', 'tiny', '--run-dir', str(copy), '--set', 'sft.monitor=NDCG@10', '--set', 'select_users=16',
            '--set', 'sft.eval_every=2', '--set', 'tasks.prompt_style=compact')
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads((copy/'sft'/'DONE.json').read_text())['metrics']
    scores = pd.read_csv(copy/'sft'/'scores.csv')
    nd = scores[scores.name == 'NDCG@10']
    assert len(nd) >= 2 and done['monitor'] == 'NDCG@10'
    assert abs(done['best_value'] - nd.value.max()) < 1e-9
    r = cli('sft', '--config', 'tiny', '--run-dir', str(copy), '--set', 'sft.monitor=NDCG@50', '--set', 'select_beams=20')
    assert r.returncode == 2 and 'select_beams' in r.stderr, r.stderr[-2000:]

# ---------------------------------------------------------------- the report's paired bootstrap against the baselines

def _ranks(path):
    import pandas as pd
    return pd.read_csv(path)

def test_report_bootstraps_every_generative_row_against_every_baseline(tiny_run):
    "Per-row ranks of every model on the identical rows; the report's table covers each (generative, baseline) pair and RL vs SFT."
    from minionerec.evaluate import bootstrap_table, bootstrap_pairs
    run, _ = tiny_run
    ev, rl = _ranks(run/'evaluate'/'ranks.csv'), _ranks(run/'rl'/'ranks.csv')
    metrics = json.loads((run/'evaluate'/'metrics.json').read_text())
    base = ['Popularity', 'MF', 'SASRec', 'HSTU', 'TIGER']                      # the tiny preset's baselines (GRU4Rec off)
    assert list(ev.columns) == ['row', 'target', 'user_id', 'MiniOneRec SFT'] + base and list(metrics) == ['MiniOneRec SFT'] + base
    assert list(rl.columns) == ['row', 'target', 'user_id', 'MiniOneRec SFT', 'MiniOneRec SFT+RL']
    assert ev['row'].equals(rl['row']) and ev['target'].equals(rl['target']) and ev['row'].is_unique
    assert len(ev) == metrics['MiniOneRec SFT']['rows'] > 0
    comps = json.loads((run/'report'/'comparisons.json').read_text())
    assert (comps['split'], comps['rows'], comps['seed'], comps['rl_sft_rows_differ']) == ('test', len(ev), 42, 0)
    gen = ['MiniOneRec SFT', 'MiniOneRec SFT+RL']
    want = [(g, b, m) for g in gen for b in base for m in ('NDCG@10', 'HR@10')] + [(gen[1], gen[0], m) for m in ('NDCG@10', 'HR@10')]
    assert [(t['split'], t['model'], t['vs'], t['metric']) for t in comps['table']] == [(sp, *w) for sp in ('test', 'valid') for w in want]
    valid_rows = len(_ranks(run/'evaluate'/'ranks_valid.csv'))
    assert comps['rows_by_split'] == {'test': len(ev), 'valid': valid_rows}
    for t in comps['table']:                                         # every interval resamples users
        assert t['resampled'] == 'users' and t['clusters'] <= t['rows'] and t['lo'] <= t['delta'] <= t['hi']
        sfx = '' if t['split'] == 'test' else '_valid'
        m = {**json.loads((run/'evaluate'/f'metrics{sfx}.json').read_text()), **json.loads((run/'rl'/f'metrics{sfx}.json').read_text())}
        assert t['rows'] == (len(ev) if t['split'] == 'test' else valid_rows)
        for side, name in (('b', t['model']), ('a', t['vs'])):   # the same metric code as the results table
            assert abs(t[side] - m[name][t['metric']]) < 1e-9, (name, t['metric'])
    # the SFT+RL vs SFT rows are the rl stage's own bootstrap on each split (same rows, users, seed and resamples)
    for sp in ('test', 'valid'):
        own = json.loads((run/'rl'/'comparison.json').read_text())['bootstrap'][sp][0]
        mine, = [t for t in comps['table'] if (t['split'], t['model'], t['vs'], t['metric']) == (sp, gen[1], gen[0], 'NDCG@10')]
        assert {k: v for k, v in mine.items() if k in own} == own
    # seeded: recomputing from the saved ranks gives the identical table
    ranks = ev.assign(**{'MiniOneRec SFT+RL': rl['MiniOneRec SFT+RL']})
    again = bootstrap_table(ranks, bootstrap_pairs(list(ranks.columns)), list_len={n: 10 for n in gen + base}, seed=42)
    assert again == [{k: v for k, v in t.items() if k != 'split'} for t in comps['table'] if t['split'] == 'test']
    report = (run/'report'/'report.md').read_text()
    assert '## Paired bootstrap: every generative row against every baseline' in report
    assert '| test | MiniOneRec SFT+RL | SASRec | NDCG@10 |' in report and '| valid | MiniOneRec SFT+RL | SASRec | NDCG@10 |' in report
    assert '## Validation and test side by side' in report and '## Provenance' in report
    assert json.loads((run/'report'/'DONE.json').read_text())['metrics']['comparisons'] == comps['table']

def test_report_interval_above_zero_for_a_model_better_on_every_row(tiny_run, tmp_path):
    "Constructed case through the report stage: an SFT+RL that ranks every target first beats SFT and every baseline beyond noise."
    import shutil
    run, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(run, copy)
    rl = _ranks(copy/'rl'/'ranks.csv'); rl['MiniOneRec SFT+RL'] = 1
    rl.to_csv(copy/'rl'/'ranks.csv', index=False)
    r = cli('report', '--config', 'tiny', '--run-dir', str(copy))
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.loads((copy/'report'/'comparisons.json').read_text())['table']
    better = [t for t in table if t['model'] == 'MiniOneRec SFT+RL' and t['split'] == 'test']
    assert len(better) == 12                                          # vs SFT and 5 baselines (Popularity, MF, SASRec, HSTU, TIGER), NDCG@10 and HR@10
    for t in better:
        assert t['b'] == 1.0 and t['lo'] > 0 and t['p_b_better'] == 1.0, t
    # ranks of other rows are refused with a clear error, never silently joined
    rl['row'] = rl['row'] + 1; rl.to_csv(copy/'rl'/'ranks.csv', index=False)
    r = cli('report', '--config', 'tiny', '--run-dir', str(copy))
    assert r.returncode == 2 and 'rl/ranks.csv holds other rows than' in r.stderr, r.stderr[-2000:]

# ---------------------------------------------------------------- one seed sets every seed; several seeds give a spread

def test_seeds_option_runs_each_seed_with_every_sub_seed_and_summarises(tmp_path):
    "`--set seeds=[1,2]`: one run per seed in run_dir/seed_<s>, every unpinned sub-seed = s in its resolved config, a mean/spread summary."
    import pandas as pd
    from minionerec.presets import load_config
    from operator import attrgetter
    from minionerec.pipeline import seed_paths
    run = tmp_path/'seeds'
    r = cli('pipeline', '--config', 'tiny', '--run-dir', str(run), '--set', 'seeds=[1,2]', '--set', 'model.seed=5',
            '--set', 'stages=[prepare,embed,sid,sft,evaluate,report]')
    assert r.returncode == 0, r.stderr[-3000:]
    for s in (1, 2):
        c = load_config(str(run/f'seed_{s}'/'resolved_config.yaml'))
        assert c.seed == s and c.model.seed == 5 and c.pinned_seeds == ['model.seed'] and c.seeds == []
        assert {p: attrgetter(p)(c) for p in seed_paths(c) if p != 'model.seed'} == {p: s for p in seed_paths(c) if p != 'model.seed'}
        assert (run/f'seed_{s}'/'report'/'report.md').exists()
    summ = pd.read_csv(run/'seeds'/'summary.csv')
    test = summ[(summ.split == 'test') & (summ.metric == 'NDCG@10')].set_index('model')
    assert {'MiniOneRec SFT', 'SASRec', 'Popularity'} <= set(test.index) and (test['count'] == 2).all()
    assert set(summ.split) == {'test', 'valid'}                     # both splits of every model, over the seeds
    per = pd.read_csv(run/'seeds'/'per_seed.csv')
    assert sorted(per.seed.unique()) == [1, 2]
    assert '± ' in (run/'seeds'/'summary.md').read_text()

def test_rl_reuses_the_evaluate_stage_sasrec_as_collab_scorer(tiny_run, tmp_path):
    "With `rewards.collab > 0` the evaluate stage's SASRec (same config) is cached as the RL scorer; the rl stage loads it instead of training it again."
    import shutil
    run, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(run, copy)
    env = {**os.environ, 'OMP_WAIT_POLICY': 'PASSIVE', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_CACHE': str(tmp_path/'cache')}
    run_stage = lambda *a: subprocess.run([sys.executable, '-m', 'minionerec', *a, '--config', 'tiny', '--run-dir', str(copy), '--set', 'rewards.collab=1'],
                                          capture_output=True, text=True, env=env, timeout=900)
    r = run_stage('evaluate', '--force')
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path/'cache'/'scorers').glob('sasrec-*.pt'))) == 1
    r = run_stage('rl')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'collaborative scorer: SASRec trained' not in r.stderr          # loaded, not retrained
    hist = json.loads((copy/'rl'/'DONE.json').read_text())
    assert hist['metrics']['explain']['steps'] > 0

def test_rl_falls_back_to_sft_when_full_validation_says_so(tiny_run, tmp_path, monkeypatch):
    "When the kept RL step loses on the full validation split (`compare.rl_falls_back`), SFT+RL ships the SFT weights and rows, and the report says so."
    import shutil, torch
    import pandas as pd
    import minionerec.compare as compare
    from minionerec.presets import load_config
    from minionerec.pipeline import run_pipeline
    from minionerec.model import load_checkpoint
    run, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(run, copy)
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE'); monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    seen = []
    monkeypatch.setattr(compare, 'rl_falls_back', lambda sft, rl, keep_best=True: seen.append((sft, rl)) or True)
    done = run_pipeline(load_config('tiny').replace(run_dir=str(copy)), stages=['rl', 'report'], force=('rl',))
    assert len(seen) == 1                                                   # decided once, on validation
    m = done['rl']['metrics']
    assert m['fell_back'] and m['best_step'] == 0 and 'it lost there, so SFT+RL is the SFT model' in m['verdict']
    comp = json.loads((copy/'rl'/'comparison.json').read_text())
    assert comp['fell_back'] and set(comp['full_valid_ndcg10']) == {'MiniOneRec SFT', 'MiniOneRec SFT+RL'}
    for sp in ('valid', 'test'):                                            # identical rows: every difference is exactly 0
        b = next(x for x in comp['bootstrap'][sp] if x['metric'] == 'NDCG@10')
        assert b['delta'] == 0 and b['lo'] == 0 and b['hi'] == 0
    ranks = pd.read_csv(copy/'rl'/'ranks.csv')
    assert ranks['MiniOneRec SFT'].equals(ranks['MiniOneRec SFT+RL'])
    sft_dir = copy/'sft'/json.loads((copy/'sft'/'DONE.json').read_text())['metrics']['checkpoint']
    sft, rl = load_checkpoint(sft_dir)[0], load_checkpoint(copy/'rl'/'checkpoint')[0]
    assert all(torch.equal(a, b) for a, b in zip(sft.state_dict().values(), rl.state_dict().values()))
    assert json.loads((copy/'rl'/'checkpoint'/'minionerec.json').read_text())['extra']['fell_back'] is True
    assert 'lost to SFT on the full validation split' in (copy/'report'/'report.md').read_text()
