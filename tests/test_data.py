"""Integration tests of minionerec.data: the real published benchmark (skipped when absent), round trips of the
published layout, the download helper on local file:// URLs, and raw Amazon 2018 preprocessing on hand-made fixtures."""
import gzip, json, shutil
from pathlib import Path
import numpy as np
import pytest
from minionerec.data import *
from minionerec.data import DataError, SPLITS

FIXTURES = Path(__file__).parent/'fixtures'/'amazon_raw'

# ---------------------------------------------------------------- the real published data (../shared/data)
@pytest.fixture(scope='module')
def real(amazon_root):
    return load_published(amazon_root)

def test_real_counts(real):
    assert real.name == 'Industrial_and_Scientific'
    assert real.n_items == 3686
    assert [len(real.splits[s]) for s in SPLITS] == [10393, 4532, 4533]

def test_real_contract(real):
    assert real.items.index.tolist() == list(range(3686)) and real.items.item_id.tolist() == list(range(3686))
    assert list(real.items.columns[:5]) == ['item_id', 'title', 'description', 'brand', 'categories']
    # descriptions were printed python lists in item.json; they are clean text now
    assert not real.items.description.str.startswith("['").any() and not real.items.description.str.startswith('["').any()
    assert (real.items.description == '').sum() >= 200          # 229 items have no description
    assert real.items.categories.map(len).eq(0).all()            # categories are empty in the public file
    for s in SPLITS:
        df = real.splits[s]
        assert list(df.columns) == ['user_id', 'history', 'target']
        assert df.history.map(len).between(1, 10).all()
        assert df.target.between(0, 3685).all() and df.history.map(min).ge(0).all() and df.history.map(max).le(3685).all()
    # published SIDs: 3 tokens each, 16 items collide (3,686 items on 3,670 SIDs)
    assert len(real.sids) == 3686 and all(len(t) == 3 for t in real.sids.values())
    assert len(set(real.sids.values())) == 3670
    # repeat purchases: about 3% of test targets are in their own history
    rep = np.mean([t in h for h, t in zip(real.splits['test'].history, real.splits['test'].target)])
    assert 0.01 < rep < 0.06

def test_real_csv_titles_match_items(real, amazon_root):
    "The CSV's redundant title column agrees with item.json (so reading ids only loses nothing)."
    import pandas as pd
    p = next((Path(amazon_root)/'Amazon'/'test').glob('*.csv'))
    df = pd.read_csv(p, nrows=200)
    assert [' '.join(t.split()) for t in df.item_title] == real.titles(df.item_id)

def test_real_round_trip(real, tmp_path):
    adir = write_published(real, tmp_path)
    back = load_published(tmp_path)
    assert back.equals(real) and back.tag == real.tag
    assert (adir/'info'/f'{real.name}_{real.tag}.txt').read_text().splitlines()[0].startswith('<a_236><b_231><c_226>\t')

def test_real_report(real):
    r = dataset_report(real)
    assert r['items'] == 3686 and r['samples'] == {'train': 10393, 'valid': 4532, 'test': 4533}
    assert 0 < r['popularity_gini'] < 1

# ---------------------------------------------------------------- synthetic data and the published layout
def test_synthetic_round_trip_and_inter(tmp_path):
    data = make_synthetic(SyntheticConfig.tiny())
    adir = write_published(data, tmp_path, inter=True)
    assert load_published(tmp_path).equals(data)
    assert load_published(adir).equals(data)                     # the Amazon/ folder itself works too
    lines = (adir/'inter'/f'{data.name}.test.inter').read_text().splitlines()
    assert lines[0] == 'user_id:token\titem_id_list:token_seq\titem_id:token'
    assert len(lines) == len(data.splits['test']) + 1
    u, h, t = lines[1].split('\t')
    row = data.splits['test'].iloc[0]
    assert (u, [int(x) for x in h.split()], int(t)) == (row.user_id, row.history, row.target)

def test_env_var_resolution(tmp_path, monkeypatch):
    data = make_synthetic(SyntheticConfig.tiny().replace(n_users=40))
    write_published(data, tmp_path)
    monkeypatch.setenv('MINIONEREC_DATA', str(tmp_path))
    assert load_published().equals(data)
    monkeypatch.setenv('MINIONEREC_DATA', str(tmp_path/'missing'))
    with pytest.raises(FileNotFoundError, match='from MINIONEREC_DATA'): load_published()

def test_download_from_local_mirror(tmp_path):
    data = make_synthetic(SyntheticConfig.tiny().replace(n_users=40))
    data.sids = {i: (f'<a_{i % 7}>', f'<b_{i // 7}>') for i in range(data.n_items)}
    write_published(data, tmp_path/'mirror')
    got = download_published(data.name, tmp_path/'dest', base_url=(tmp_path/'mirror'/'Amazon').as_uri(), tag=data.tag)
    assert got.equals(data)
    # without the optional SID file it still loads, without SIDs
    (tmp_path/'mirror'/'Amazon'/'index'/f'{data.name}.index.json').unlink()
    got = download_published(data.name, tmp_path/'dest2', base_url=(tmp_path/'mirror'/'Amazon').as_uri(), tag=data.tag)
    assert got.sids is None and got.n_items == data.n_items

# ---------------------------------------------------------------- raw Amazon 2018 preprocessing (hand-checked fixture)
def _cfg(**kw):
    return PrepareConfig.tiny().replace(**{'reviews': FIXTURES/'reviews.json', 'meta': FIXTURES/'meta.json', **kw})

def _rows(data, split):
    return [(r.user_id, r.history, r.target) for r in data.splits[split].itertuples()]

def test_prepare_hand_checked():
    data, st = prepare_amazon(_cfg(), return_stats=True)
    assert st['reviews'] == 30 and st['after_title_rules'] == 27 and st['after_time_window'] == 25  # P7, P8, P9; u7 first, u9 last
    assert st['k_core_rounds'] == 4 and (st['users'], st['items']) == (4, 3)
    assert data.items.asin.tolist() == ['P1', 'P2', 'P3']
    assert _rows(data, 'train') == [('u1', [0], 1), ('u1', [0, 1], 2), ('u1', [0, 1, 2], 0), ('u2', [0], 1),
                                    ('u2', [0, 1], 2), ('u5', [0], 1), ('u5', [0, 1], 2)]
    assert _rows(data, 'valid') == [('u9', [0], 1)]
    assert _rows(data, 'test') == [('u9', [0, 1], 2)]

def test_prepare_separate_item_k():
    d = prepare_amazon(_cfg(item_k=1))
    assert (d.n_users, d.n_items) == (6, 6) and [len(d.splits[s]) for s in SPLITS] == [10, 1, 2]
    assert d.items.asin.tolist() == ['P1', 'P2', 'P3', 'P4', 'P5', 'P6']
    assert _rows(d, 'valid') == [('u5', [0, 1], 2)]

def test_prepare_gzip_and_outputs(tmp_path):
    for name in ('reviews.json', 'meta.json'):
        with gzip.open(tmp_path/(name + '.gz'), 'wt') as f: f.write((FIXTURES/name).read_text())
    plain = prepare_amazon(_cfg())
    data = prepare_amazon(_cfg(reviews=tmp_path/'reviews.json.gz', meta=tmp_path/'meta.json.gz', out=tmp_path/'out', name='Tiny'))
    assert data.items.equals(plain.items) and all(data.splits[s].equals(plain.splits[s]) for s in SPLITS)
    adir = tmp_path/'out'/'Amazon'
    assert data.root == adir and data.tag == '3_2016-10-2018-11'
    assert load_published(tmp_path/'out').equals(data)                  # asin kept in item.json too
    csv_lines = (adir/'test'/'Tiny_3_2016-10-2018-11.csv').read_text().splitlines()
    assert csv_lines == ['user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid',
                         'u9,"[\'Digital Caliper 6"" Stainless\', \'Nitrile Gloves, Large (100 Count)\']",PLA Filament 1.75mm,"[0, 1]",2,[],']
    assert (adir/'inter'/'Tiny.train.inter').read_text().splitlines()[1] == 'u1\t0\t1'
    assert json.loads((adir/'info'/'Tiny_3_2016-10-2018-11.stats.json').read_text())['after_k_core'] == 13   # u1 4 + u2 3 + u5 3 + u9 3 reviews

def test_prepare_window_edges_inclusive():
    d = prepare_amazon(_cfg(user_k=2))
    u9 = [(h, t) for s in SPLITS for u, h, t in _rows(d, s) if u == 'u9']
    p = d.items.asin.tolist()
    assert [([p[i] for i in h], p[t]) for h, t in u9] == [(['P1'], 'P2'), (['P1', 'P2'], 'P3')]  # start and end seconds kept, end+1 dropped
    u7 = [(h, t) for s in SPLITS for u, h, t in _rows(d, s) if u == 'u7']
    assert [([p[i] for i in h], p[t]) for h, t in u7] == [(['P1'], 'P2')]                        # start-1 dropped

@pytest.mark.parametrize('content,field', [
    ('{"reviewerID": "u1", "asin": "P1"', 'line 2: invalid JSON'),
    ('{"reviewerID": "u1", "unixReviewTime": 1483315200}', "line 2, field 'asin': missing"),
    ('["not", "an", "object"]', 'line 2: expected a JSON object'),
])
def test_prepare_bad_reviews(tmp_path, content, field):
    first = (FIXTURES/'reviews.json').read_text().splitlines()[0]
    (tmp_path/'r.json').write_text(first + '\n' + content + '\n')
    with pytest.raises(DataError, match=f"r.json, {field}".replace('(', r'\(').replace('[', r'\[')):
        prepare_amazon(_cfg(reviews=tmp_path/'r.json'))

def test_prepare_empty_after_filtering():
    with pytest.raises(DataError, match='no interactions left after filtering') as e: prepare_amazon(_cfg(start='2019-01', end='2019-12'))
    assert 'reviews.json' in str(e.value) and "'after_time_window': 0" in str(e.value)

def test_non_chronological_sequence():
    with pytest.raises(DataError, match=r"user 'u1', event 2, field timestamp: 5 is earlier than the previous event \(9\)"):
        make_samples({'u1': [(0, 1), (1, 9), (2, 5)]})

# ---------------------------------------------------------------- published CSV errors
@pytest.fixture
def toy_layout(tmp_path):
    data = make_synthetic(SyntheticConfig.tiny().replace(n_users=30))
    write_published(data, tmp_path)
    p = tmp_path/'Amazon'/'valid'/f'{data.name}_{data.tag}.csv'
    return tmp_path, p, data

def _edit_row(p, row, col, value):
    import csv as _csv
    rows = list(_csv.reader(p.open(newline='')))
    rows[row][col] = value
    with p.open('w', newline='') as f: _csv.writer(f, lineterminator='\n').writerows(rows)

@pytest.mark.parametrize('col,value,msg', [
    (3, '[1, 5000]', 'row 2 (line 3), column history_item_id: unknown item id 5000'),
    (4, '-1', 'row 2 (line 3), column item_id: unknown item id -1'),
    (3, '[]', 'row 2 (line 3), column history_item_id: empty history'),
    (3, 'list(range(3))', 'row 2 (line 3), column history_item_id: expected a list literal'),
    (3, '[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]', 'row 2 (line 3), column history_item_id: 11 items, more than max_history=10'),
    (0, '', 'row 2 (line 3), column user_id: empty user id'),
])
def test_bad_csv_rows(toy_layout, col, value, msg):
    root, p, _ = toy_layout
    _edit_row(p, 2, col, value)
    with pytest.raises(DataError) as e: load_published(root)
    assert str(p) in str(e.value) and msg in str(e.value)

def test_bad_item_json(toy_layout):
    root, _, data = toy_layout
    p = root/'Amazon'/'index'/f'{data.name}.item.json'
    d = json.loads(p.read_text()); del d['5']; p.write_text(json.dumps(d))
    with pytest.raises(DataError, match='item ids must be 0..190 without gaps; id 5 is missing'): load_published(root)
    d['5'] = {'description': 'no title'}; p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r'item 5, field title: missing or empty'): load_published(root)
    p.write_text('{"0": ')
    with pytest.raises(ValueError, match='item.json: invalid JSON at line 1'): load_published(root)

def test_bad_header(toy_layout):
    root, p, _ = toy_layout
    p.write_text(p.read_text().replace('history_item_id', 'hist_ids', 1))
    with pytest.raises(DataError, match=r"missing column\(s\) \['history_item_id'\]"): load_published(root)
