"""Preset 'auto': the budget rule's settings on data of several shapes are sensible, never shrink with a larger budget,
each comes with its reason (in `minionerec plan` and the resolved config), what you set is kept, and the tiny pipeline runs."""
import os, subprocess, sys
from pathlib import Path
import pytest
from minionerec.presets import preset, fit_to_data, load_config, plan_run, data_stats
from minionerec.pipeline import run_pipeline

def stats(rows:int, hist:int, items:int=1000) -> dict:
    "Stats of a made-up dataset: `rows` train rows (a tenth as many valid and test rows), every history `hist` items long."
    return {'items': items, 'users': rows // 50, 'train_rows': rows, 'valid_rows': rows // 10, 'test_rows': rows // 10,
            'history_median': float(hist), 'history_p90': float(hist), 'history_max': hist}

SHAPES = {'small/short': stats(5_000, 2), 'small/long': stats(5_000, 10), 'large/short': stats(400_000, 2), 'large/long': stats(400_000, 10),
          'ml-100k': stats(78_675, 10, 1349)}
STEPS = ('sft.max_steps', 'rl.max_steps', 'baselines.tiger.max_steps', 'baselines.sasrec.epochs', 'baselines.hstu.epochs', 'baselines.mf.epochs')

def get(cfg, key):
    "A config value by dotted key; for an epoch-trained baseline's `epochs`, its optimizer steps (epochs x batches of the rows kept)."
    if key.endswith('.epochs') and key.startswith('baselines.'):
        b = get(cfg, key.rsplit('.', 1)[0]); rows = SHAPE_ROWS[id(cfg)]
        return b.epochs * -(-min(rows, cfg.data.max_train or rows) // b.batch_size)
    for p in key.split('.'): cfg = getattr(cfg, p)
    return cfg

SHAPE_ROWS = {}   # id(config) -> train rows of the shape it was fitted to

def fit(shape, minutes=30.0, **kw):
    c = fit_to_data(preset('auto').replace(budget_minutes=minutes), stats=SHAPES[shape], **kw)
    SHAPE_ROWS[id(c)] = SHAPES[shape]['train_rows']; return c

def test_settings_follow_the_data():
    c = {k: fit(k) for k in SHAPES}
    assert c['small/short'].tasks.max_history == 2 and c['small/long'].tasks.max_history == 10   # history from the data, not demo's 1
    assert c['small/long'].sft.max_length > c['small/short'].sft.max_length
    for k, x in c.items():   # every model reads the same history and has the same width
        assert {x.baselines.sasrec.max_len, x.baselines.hstu.max_len, x.baselines.mf.max_len, x.baselines.tiger.max_hist} == {x.tasks.max_history}, k
        assert {x.baselines.sasrec.hidden, x.baselines.hstu.hidden, x.baselines.mf.dim, x.baselines.tiger.d_model} == {x.model.hidden_size}, k
        assert all(get(x, s) >= 1 for s in STEPS) and x.sft.eval_every <= x.sft.max_steps, k
        assert x.planned_minutes['total'] <= 30, (k, x.planned_minutes)
    assert c['large/long'].model.hidden_size > c['small/short'].model.hidden_size      # more data, a wider model
    assert c['small/short'].sft.epochs > c['large/long'].sft.epochs                     # the same budget is more passes over less data
    # a step costs more with longer histories: fewer SFT steps in the same budget
    assert c['large/long'].sft.max_steps < c['large/short'].sft.max_steps

@pytest.mark.parametrize('shape', list(SHAPES))
def test_larger_budget_never_plans_fewer_steps(shape):
    plans = [fit(shape, m) for m in (2, 5, 10, 20, 30, 60, 120, 480)]
    for key in STEPS + ('select_users', 'baselines.tiger.valid_max_users'):
        vals = [get(p, key) for p in plans]
        assert vals == sorted(vals), (key, vals)
    totals = [p.planned_minutes['total'] for p in plans]
    assert totals == sorted(totals) and totals[-1] <= 480

def test_every_setting_has_its_reason_in_plan_and_resolved_config(tmp_path):
    c = fit('ml-100k')
    assert {'budget_minutes', 'data', 'tasks.max_history', 'model.hidden_size', 'sft.max_steps', 'rl.max_steps', 'baselines.sasrec.epochs',
            'baselines.hstu.epochs', 'baselines.mf.epochs', 'baselines.tiger.max_steps'} <= set(c.fitted)
    assert all(v.split(': ', 1)[1].strip() for v in c.fitted.values())
    p = plan_run(c.replace(run_dir=str(tmp_path/'run')))
    assert p['sft.max_steps'] == c.fitted['sft.max_steps'] and p['minutes total'] == c.planned_minutes['total']
    assert c.to_yaml().count('fitted:') == 1 and 'planned_minutes:' in c.to_yaml()

def test_what_you_set_is_kept(tmp_path):
    c = fit('ml-100k', explicit=['sft.max_steps'])
    assert c.sft.max_steps == preset('auto').sft.max_steps and 'set by you' in c.fitted['sft.max_steps']
    y = tmp_path/'my.yaml'
    y.write_text('preset: auto\nbudget_minutes: 3\nsft: {max_steps: 7}\nbaselines: {hstu: null}\n')
    c = load_config(y, ['baselines.sasrec.epochs=2', f'run_dir={tmp_path/"run"}'])
    assert (c.sft.max_steps, c.baselines.sasrec.epochs, c.baselines.hstu, c.budget_minutes) == (7, 2, None, 3)
    assert 'baselines.hstu.epochs' not in c.fitted and 'set by you' in c.fitted['baselines.sasrec.epochs']

def test_auto_preset_runs_the_pipeline_on_fixture_data(tmp_path):
    "The tiny synthetic catalogue as data, a one-minute budget; small encoder sizes to keep the test quick."
    tiny = ['data.synthetic={n_top: 4, n_sub: 3, items_per_leaf: 16, n_users: 300}', 'embed={batch_size: 16, max_length: 64, max_chars: 400}',
            'sid.rqvae={hidden: [32], code_dim: 8, codebook_size: 16, epochs: 30, log_every: 10}', f'run_dir={tmp_path/"run"}',
            'budget_minutes=1', 'model.vocab_size=400', 'baselines.tiger.layers=1']
    cfg = load_config('auto', tiny)
    assert cfg.tasks.max_history == data_stats(__import__('minionerec.pipeline', fromlist=['x']).build_dataset(cfg.data)[0])['history_max']
    done = run_pipeline(cfg)
    assert set(done) == set(cfg.stages)
    assert (tmp_path/'run'/'report'/'report.md').exists()
    assert 'fitted:' in (tmp_path/'run'/'resolved_config.yaml').read_text()
    assert done['sft']['metrics']['steps'] <= cfg.sft.max_steps

def test_readme_own_data_example_uses_auto(tmp_path):
    "The README's own-data YAML, pointed at two small tables, loads as preset auto with every setting fitted."
    import re, pandas as pd, yaml
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text()
    block = next(b for b in re.findall(r'```yaml\n(.*?)```', readme, re.S) if 'interactions:' in b)
    d = yaml.safe_load(block)
    assert d['preset'] == 'auto' and d['budget_minutes'] > 0
    rows = [(f'u{u}', f'i{(u * 7 + k * (1 + u % 3)) % 40}', 1_600_000_000 + 3600 * k) for u in range(60) for k in range(8)]
    pd.DataFrame(rows, columns=['customer_id', 'item', 'time']).to_csv(tmp_path/'events.csv', index=False)
    pd.DataFrame({'item': [f'i{i}' for i in range(40)], 'title': [f'Item number {i}' for i in range(40)]}).to_csv(tmp_path/'items.csv', index=False)
    d['data'].update(interactions=str(tmp_path/'events.csv'), items=str(tmp_path/'items.csv')); d['run_dir'] = str(tmp_path/'run')
    (tmp_path/'my_data.yaml').write_text(yaml.safe_dump(d))
    c = load_config(tmp_path/'my_data.yaml')
    assert c.tasks.max_history > 1 and {'sft.max_steps', 'baselines.tiger.max_steps', 'rl.max_steps'} <= set(c.fitted)
