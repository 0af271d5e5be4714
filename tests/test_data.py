"""Integration tests of minionerec.data: the real published benchmark (skipped when absent), round trips of the
published layout, the download helper on local file:// URLs, and raw Amazon 2018 preprocessing on hand-made fixtures."""
import gzip, json, shutil
from pathlib import Path
import numpy as np
import pytest
from minionerec.data import *
from minionerec.data import DataError, SPLITS
from minionerec.synthetic import SyntheticConfig, make_synthetic
from minionerec.protocol import ProtocolConfig, prepare_interactions, make_samples
from minionerec.amazon import PrepareConfig, prepare_amazon

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

# ---------------------------------------------------------------- published layout: files from other tools (issue 14)
def test_published_bom_is_read_past(toy_layout):
    root, p, data = toy_layout
    p.write_bytes(b'\xef\xbb\xbf' + p.read_bytes())
    assert load_published(root).splits['valid'].equals(data.splits['valid'])

def test_published_non_utf8_names_file_and_byte(toy_layout):
    root, p, _ = toy_layout
    raw = p.read_bytes(); at = raw.index(b'\n') + 3
    p.write_bytes(raw[:at] + b'\xff' + raw[at + 1:])
    with pytest.raises(DataError, match=rf'{p.name}: not UTF-8 text at byte offset {at} \(byte 0xff\)'): load_published(root)

def test_header_only_split_is_an_error(toy_layout):
    root, p, _ = toy_layout
    p.write_text(p.read_text().splitlines()[0] + '\n')
    with pytest.raises(DataError, match=rf'{p.name}: no samples \(a header without rows\)'): load_published(root)

def test_duplicate_item_json_key_is_an_error(toy_layout):
    root, _, data = toy_layout
    p = root/'Amazon'/'index'/f'{data.name}.item.json'
    p.write_text(p.read_text().replace('"7": {', '"3": {', 1))
    with pytest.raises(DataError, match=r"item.json: duplicate key '3'"): load_published(root)

def test_sid_depth_blames_the_odd_item(toy_layout):
    root, _, data = toy_layout
    p = root/'Amazon'/'index'/f'{data.name}.index.json'
    sids = {str(i): ['<a_1>', f'<b_{i}>', '<c_0>'] for i in range(data.n_items)}
    sids['0'] = ['<a_1>', '<b_0>']                   # item 0 is the short one: it, not item 1, is named
    p.write_text(json.dumps(sids))
    with pytest.raises(DataError, match=rf'index.json, item 0: 2 tokens, while {data.n_items - 1} of {data.n_items} items have 3'):
        load_published(root)

@pytest.mark.parametrize('name', ['../../../../../ESCAPED', 'a/b', '..', '.hidden'])
def test_dataset_names_reject_paths(tmp_path, name):
    from minionerec.core import ConfigError
    from minionerec.pipeline import DataSection
    for make in (lambda: SyntheticConfig(name=name), lambda: PrepareConfig(name=name), lambda: DataSection(source='published', name=name),
                 lambda: ProtocolConfig() and prepare_interactions(tmp_path/'e.csv', tmp_path/'i.csv', name=name)):
        with pytest.raises(ConfigError, match='is not a dataset name'): make()
    data = make_synthetic(SyntheticConfig.tiny().replace(n_users=30)); data.name = name
    with pytest.raises(ConfigError, match='is not a dataset name'): write_published(data, tmp_path/'out')
    assert not any(p.is_file() for p in tmp_path.parent.rglob('ESCAPED*'))

# ---------------------------------------------------------------- the generic interactions source
from minionerec.protocol import read_events, read_items, parse_times

EVENTS = [('ann', 'A', '2024-01-10'), ('ann', 'B', '2024-02-11'), ('ann', 'C', '2024-03-12'), ('ann', 'A', '2024-04-13'),
          ('bob', 'B', '2024-01-14'), ('bob', 'C', '2024-02-15'), ('bob', 'A', '2024-03-16'), ('bob', 'B', '2024-04-17'),
          ('cid', 'C', '2024-01-18'), ('cid', 'A', '2024-02-19'), ('cid', 'B', '2024-03-20'), ('cid', 'D', '2024-04-21'),
          ('dee', 'A', '2024-01-22'), ('dee', 'B', '2024-02-23'), ('dee', 'C', '2024-03-24'), ('dee', 'E', '2024-04-25')]
ITEMS = [('A', 'Red pen', 'Acme'), ('B', 'Blue ink', 'Acme'), ('C', 'Pad, A5', 'Papyr'), ('D', '', 'Papyr'), ('E', '<b>Sale</b> item', '')]
P3 = ProtocolConfig(user_k=3, item_k=2)

def _csv(path, header, rows, sep=','):
    import csv as _csv
    with open(path, 'w', newline='', encoding='utf-8') as f: _csv.writer(f, delimiter=sep, lineterminator='\n').writerows([header, *rows])
    return path

@pytest.fixture
def shop(tmp_path):
    return _csv(tmp_path/'events.csv', ['user', 'item', 'time'], EVENTS), _csv(tmp_path/'items.csv', ['item', 'title', 'brand'], ITEMS)

def _rows3(d):
    return [[(r.user_id, d.titles(r.history), d.titles([r.target])[0]) for r in d.splits[s].itertuples()] for s in SPLITS]

def test_interactions_hand_checked(shop, tmp_path):
    d, st = prepare_interactions(*shop, protocol=P3, out=tmp_path/'out', return_stats=True)
    # D (no title) and E (HTML title) go with their events: 16 -> 14, and the 3/2-core keeps all of them
    assert st['items_dropped'] == {'no_title': 1, 'html_title': 1, 'long_title': 0}
    assert (st['events'], st['after_title_rules'], st['after_time_window'], st['after_k_core'], st['k_core_rounds']) == (16, 14, 14, 14, 0)
    assert (d.name, d.n_users, d.n_items, d.tag) == ('events', 4, 3, '3') and d.items.source_id.tolist() == ['A', 'B', 'C']
    # 10 samples (ann, bob 3; cid, dee 2) by target time: train int(8.0) = 8, valid int(9.0) - 8 = 1 (ann, 04-13), test 1 (bob, 04-17)
    tr, va, te = _rows3(d)
    assert tr[:2] == [('ann', ['Red pen'], 'Blue ink'), ('bob', ['Blue ink'], 'Pad, A5')] and len(tr) == 8
    assert va == [('ann', ['Red pen', 'Blue ink', 'Pad, A5'], 'Red pen')] and te == [('bob', ['Blue ink', 'Pad, A5', 'Red pen'], 'Blue ink')]
    assert load_published(tmp_path/'out').equals(d)
    stats = json.loads((tmp_path/'out'/'Amazon'/'info'/'events_3.stats.json').read_text())
    assert stats['after_k_core'] == 14 and stats['protocol']['user_k'] == 3

def test_interactions_formats_agree(shop, tmp_path):
    import pandas as pd
    ref = prepare_interactions(*shop, protocol=P3)
    ev = pd.read_csv(shop[0], dtype=str, keep_default_na=False); it = pd.read_csv(shop[1], dtype=str, keep_default_na=False)
    ms = (pd.to_datetime(ev.time, utc=True) - pd.Timestamp(0, tz='UTC')) // pd.Timedelta(milliseconds=1)
    variants = {}
    # TSV with renamed columns and unix seconds
    ev2 = ev.rename(columns={'user': 'customer', 'item': 'sku', 'time': 'ts'}).assign(ts=(ms // 1000).astype(str))
    ev2.to_csv(tmp_path/'e.tsv', sep='\t', index=False); it.rename(columns={'item': 'sku', 'title': 'name'}).to_csv(tmp_path/'i.tsv', sep='\t', index=False)
    variants['tsv'] = prepare_interactions(tmp_path/'e.tsv', tmp_path/'i.tsv', name='events', columns={'user': 'customer', 'item': 'sku', 'time': 'ts'},
                                           item_columns={'item': 'sku', 'title': 'name'}, protocol=P3)
    # gzipped JSON lines with milliseconds and the *_id aliases
    with gzip.open(tmp_path/'e.jsonl.gz', 'wt') as f:
        for (u, i, _), t in zip(EVENTS, ms): f.write(json.dumps({'user_id': u, 'item_id': i, 'timestamp': int(t)}) + '\n')
    with gzip.open(tmp_path/'i.jsonl.gz', 'wt') as f:
        for i, t, b in ITEMS: f.write(json.dumps({'item_id': i, 'title': t, 'brand': b}) + '\n')
    variants['jsonl.gz'] = prepare_interactions(tmp_path/'e.jsonl.gz', tmp_path/'i.jsonl.gz', name='events', protocol=P3)
    # Parquet with real datetime values; CSV with a byte-order mark (as Excel writes)
    ev.assign(time=pd.to_datetime(ev.time, utc=True)).to_parquet(tmp_path/'e.parquet'); it.to_parquet(tmp_path/'i.parquet')
    variants['parquet'] = prepare_interactions(tmp_path/'e.parquet', tmp_path/'i.parquet', name='events', protocol=P3)
    (tmp_path/'bom.csv').write_bytes(b'\xef\xbb\xbf' + shop[0].read_bytes())
    variants['bom'] = prepare_interactions(tmp_path/'bom.csv', shop[1], name='events', protocol=P3)
    for k, d in variants.items(): assert d.equals(ref), k

def test_interactions_protocol_settings(shop):
    d, st = prepare_interactions(*shop, protocol=P3.replace(start='2024-01-10', end='2024-04-25'), return_stats=True)   # both days inclusive
    assert d.tag == '3_2024-01-10-2024-04-25' and st['after_time_window'] == 14
    assert prepare_interactions(*shop, protocol=P3.replace(start='2024-01-11'), return_stats=True)[1]['after_time_window'] == 13
    # February and March: each user keeps 2 events, so the 3-core leaves nobody, and the error names the k-core
    with pytest.raises(DataError, match=r'events.csv: no interactions left after filtering: the k-core \(user_k=3, item_k=2\) removed the last 8'):
        prepare_interactions(*shop, protocol=P3.replace(start='2024-02', end='2024-03', user_k=3))
    llo = prepare_interactions(*shop, protocol=P3.replace(split='leave_last_out'))
    assert [len(llo.splits[s]) for s in SPLITS] == [2, 4, 4]   # ann/bob 3 samples, cid/dee 2

@pytest.mark.parametrize('case,msg', [
    ('missing_column', r"events.csv: no time column \(looked for 'time' or 'timestamp'\); the columns are \['user', 'item', 'when'\]"),
    ('misnamed_rename', r"events.csv: no column 'ts' \(data.columns.time\); the columns are \['user', 'item', 'time'\]"),
    ('unknown_item', r"events.csv, row 6, column 'item': item 'Q' is not in the item table .*items.csv \(1 event\(s\) of 1 unknown item\(s\)\)"),
    ('duplicate_item', r"items.csv, row 3, column 'item': item 'B' appears again \(first at row 2\)"),
    ('bad_time', r"events.csv, row 3, column 'time': expected a timestamp \(unix seconds or milliseconds, or ISO 8601 like 2018-11-30T23:59:59Z\), got 'next tuesday'"),
    ('mixed_units', r"events.csv, row 2, column 'time': '1707609600000' looks like unix milliseconds but .*events.csv, row 1, column 'time': '1704844800' like seconds"),
    ('non_monotonic', r"events.csv, row 3, column 'time': '2024-01-01' is earlier than user 'ann'\'s previous event"),
    ('empty_window', r'events.csv: no interactions left after filtering: the time window 2030-01..\(open\) removed the last 14; the events before it span 2024-01-10'),
    ('empty_kcore', r'events.csv: no interactions left after filtering: the k-core \(user_k=9, item_k=2\) removed the last 14'),
    ('empty_split', r'events.csv: the valid split is empty: 10 samples split time gives 10/0/0'),
    ('non_utf8', r'items.csv: not UTF-8 text at byte offset 22 \(byte 0xe9\)'),
    ('header_only', r'events.csv: no events \(a header without rows\)'),
    ('empty_user', r"events.csv, row 5, column 'user': expected an id \(text or a whole number\), got an empty value"),
    ('bad_rating', r"events.csv, row 1, column 'rating': expected a number, got 'great'"),
])
def test_interactions_bad_input(shop, tmp_path, case, msg):
    "Each bad input: a one-line error naming the file, row and column, and nothing written under `out`."
    ev_p, it_p = shop; kw = {'protocol': P3}; ev = [list(r) for r in EVENTS]; it = [list(r) for r in ITEMS]; header = ['user', 'item', 'time']
    if case == 'missing_column': header = ['user', 'item', 'when']
    if case == 'misnamed_rename': kw['columns'] = {'time': 'ts'}
    if case == 'unknown_item': ev[5][1] = 'Q'
    if case == 'duplicate_item': it[2][0] = 'B'
    if case == 'bad_time': ev[2][2] = 'next tuesday'
    if case == 'mixed_units':
        import pandas as pd
        for r in ev: r[2] = str(int(pd.Timestamp(r[2], tz='UTC').timestamp()))
        ev[1][2] = ev[1][2] + '000'
    if case == 'non_monotonic': ev[2][2] = '2024-01-01'; kw['time_ordered'] = True
    if case == 'empty_window': kw['protocol'] = P3.replace(start='2030-01')
    if case == 'empty_kcore': kw['protocol'] = P3.replace(user_k=9)
    if case == 'empty_split': kw['protocol'] = P3.replace(ratios=(1.0, 0.0, 0.0))
    if case == 'non_utf8': it[0][1] = 'Caf\udce9'
    if case == 'header_only': ev = []
    if case == 'empty_user': ev[4][0] = ''
    if case == 'bad_rating': header = header + ['rating']; ev = [r + ['5'] for r in ev]; ev[0][3] = 'great'; kw['protocol'] = P3.replace(min_rating=4)
    _csv(ev_p, header, ev)
    if case == 'non_utf8': it_p.write_bytes('item,title,brand\n'.encode() + b'A,Caf\xe9,Acme\n' + b''.join(f'{a},{b},{c}\n'.encode() for a, b, c in ITEMS[1:]))
    else: _csv(it_p, ['item', 'title', 'brand'], it)
    with pytest.raises(DataError, match=msg) as e: prepare_interactions(ev_p, it_p, out=tmp_path/'out', **kw)
    assert '\n' not in str(e.value)
    assert not (tmp_path/'out').exists() or not any(p.is_file() for p in (tmp_path/'out').rglob('*'))

def test_interactions_duplicates_counted_or_dropped(shop):
    ev_p, it_p = shop
    _csv(ev_p, ['user', 'item', 'time'], EVENTS + [EVENTS[0]])    # ann's first event twice
    _, st = prepare_interactions(ev_p, it_p, protocol=P3, return_stats=True)
    assert st['duplicate_events'] == 1 and st['after_k_core'] == 15
    _, st = prepare_interactions(ev_p, it_p, protocol=P3.replace(drop_duplicates=True), return_stats=True)
    assert st['after_duplicates'] == 14 and st['after_k_core'] == 14

# ---------------------------------------------------------------- Amazon Reviews 2023 (hand-worked fixture, see chapter 01c)
FX23 = Path(__file__).parent/'fixtures'/'amazon2023'

def test_amazon2023_hand_worked():
    from minionerec.amazon import prepare_amazon_files
    p = ProtocolConfig(user_k=3, item_k=2, start='2022-01', end='2022-12')
    d, st = prepare_amazon_files(FX23/'reviews.jsonl', FX23/'meta.jsonl', version='2023', protocol=p)
    # metadata: PA PB PC PF kept; PD empty title, PE HTML title, PG 21 words, PA's second line a duplicate
    assert st['meta_items_kept'] == 4 and st['meta_items_dropped'] == {'duplicate': 1, 'no_title': 1, 'html_title': 1, 'long_title': 1}
    # 21 reviews; -PD -PE -PZ (no metadata) = 18; -1 ms before the window, -2023-01-01 = 16; round 1 -U4 -U6 -PF, round 2 -U5 = 10
    assert (st['reviews'], st['after_title_rules'], st['after_time_window'], st['k_core_rounds'], st['after_k_core']) == (21, 18, 16, 2, 10)
    assert (d.name, d.n_users, d.n_items) == ('reviews', 3, 3) and d.items.asin.tolist() == ['PA', 'PB', 'PC']
    # U3's PB (12:00:00.100) precedes PC (12:00:00.500) although PC comes first in the file: milliseconds are kept
    assert [[(r.user_id, r.history, r.target) for r in d.splits[s].itertuples()] for s in SPLITS] == [
        [('U2', [0], 1), ('U1', [0], 1), ('U3', [1], 2), ('U1', [0, 1], 2), ('U1', [0, 1, 2], 0)], [('U2', [0, 1], 2)], [('U3', [1, 2], 0)]]
    assert d.items.loc[1, ['description', 'brand', 'categories']].tolist() == ['Titanium coated. Case included.', 'Bosch', ['Tools & Home Improvement']]

def test_amazon2023_gzipped_same(tmp_path):
    from minionerec.amazon import prepare_amazon_files
    for n in ('reviews.jsonl', 'meta.jsonl'):
        with gzip.open(tmp_path/(n + '.gz'), 'wb') as f: f.write((FX23/n).read_bytes())
    p = ProtocolConfig(user_k=3, item_k=2, start='2022-01', end='2022-12')
    a = prepare_amazon_files(FX23/'reviews.jsonl', FX23/'meta.jsonl', version='2023', protocol=p, name='T')[0]
    b = prepare_amazon_files(tmp_path/'reviews.jsonl.gz', tmp_path/'meta.jsonl.gz', version='2023', protocol=p, name='T')[0]
    assert a.equals(b)

def test_amazon2023_rejects_seconds(tmp_path):
    from minionerec.amazon import prepare_amazon_files
    lines = (FX23/'reviews.jsonl').read_text().splitlines()
    r = json.loads(lines[2]); r['timestamp'] //= 1000; lines[2] = json.dumps(r)
    (tmp_path/'r.jsonl').write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError, match=r"r.jsonl, line 3, field 'timestamp': 1641371400 looks like seconds"):
        prepare_amazon_files(tmp_path/'r.jsonl', FX23/'meta.jsonl', version='2023')

# ---------------------------------------------------------------- the pipeline's prepare stage and the CLI on these sources
def _yaml(path, text):
    path.write_text(text); return path

def test_industrial_preset_on_your_tables(shop, tmp_path):
    "A YAML with `preset: industrial` + a data section: only the data changes; prepare writes the layout and the counts."
    from minionerec.pipeline import run_pipeline
    from minionerec.presets import load_config, preset
    ev, it = shop
    cfg = load_config(_yaml(tmp_path/'my.yaml', f'preset: industrial\nrun_dir: {tmp_path/"run"}\ndata:\n  source: interactions\n'
                            f'  interactions: {ev}\n  items: {it}\n  protocol: {{user_k: 3, item_k: 2}}\n'))
    ref = preset('industrial').to_dict()
    assert {k: v for k, v in cfg.to_dict().items() if k not in ('data', 'run_dir')} == {k: v for k, v in ref.items() if k not in ('data', 'run_dir')}
    assert cfg.data.name is None and cfg.data.protocol.user_k == 3        # the preset's dataset name did not leak in
    done = run_pipeline(cfg, ['prepare'])
    m = done['prepare']['metrics']
    assert (m['name'], m['items'], m['train_samples'], m['valid_samples'], m['test_samples']) == ('events', 3, 8, 1, 1)
    assert m['counts']['after_title_rules'] == 14
    assert load_published(tmp_path/'run'/'prepare'/'data').n_items == 3
    assert json.loads((tmp_path/'run'/'prepare'/'protocol_counts.json').read_text())['protocol']['user_k'] == 3

def test_edited_source_reruns_prepare(shop, tmp_path):
    "Stale copies: the source files' size and mtime are in the prepare fingerprint."
    import os
    from minionerec.pipeline import run_pipeline
    from minionerec.presets import load_config
    ev, it = shop
    cfg = load_config('tiny', [f'run_dir={tmp_path/"run"}', 'data.source=interactions', f'data.interactions={ev}', f'data.items={it}',
                               'data.protocol.user_k=3', 'data.protocol.item_k=2'])
    first = run_pipeline(cfg, ['prepare'])['prepare']
    assert run_pipeline(cfg, ['prepare'])['prepare'] == first                     # unchanged source: skipped
    _csv(ev, ['user', 'item', 'time'], EVENTS + [('ann', 'B', '2024-05-01')])     # one more event
    again = run_pipeline(cfg, ['prepare'])['prepare']
    assert again['fingerprint'] != first['fingerprint'] and again['metrics']['counts']['events'] == 17
    st = os.stat(ev); os.utime(ev, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # same content, touched: redone too (size + mtime)
    assert run_pipeline(cfg, ['prepare'])['prepare']['fingerprint'] != again['fingerprint']

def test_failed_prepare_leaves_nothing(toy_layout, tmp_path):
    "A header-only split fails the prepare stage naming the file, and no prepare/data is left behind (issue 14, BAD 7)."
    from minionerec.pipeline import run_pipeline
    from minionerec.presets import load_config
    root, p, _ = toy_layout
    p.write_text(p.read_text().splitlines()[0] + '\n')
    cfg = load_config('tiny', [f'run_dir={tmp_path/"run"}', 'data.source=published', f'data.path={root}'])
    with pytest.raises(DataError, match=rf'{p.name}: no samples'): run_pipeline(cfg, ['prepare'])
    assert not (tmp_path/'run'/'prepare'/'data').exists()

def test_cli_download_prepare_and_errors(tmp_path, capsys, monkeypatch, shop):
    from minionerec.cli import main
    data = make_synthetic(SyntheticConfig.tiny().replace(n_users=40, name='Industrial_and_Scientific'))
    write_published(data, tmp_path/'mirror')
    url = (tmp_path/'mirror'/'Amazon').as_uri()
    assert main(['download', 'industrial', '--dest', str(tmp_path/'got'), '--base-url', url]) == 0
    out = capsys.readouterr().out
    assert 'Industrial_and_Scientific: 192 items' in out and f'data.path={tmp_path/"got"}' in out
    assert load_published(tmp_path/'got').equals(data)
    assert main(['download', 'office', '--dest', str(tmp_path/'got2'), '--base-url', url]) == 2   # not on this mirror
    err = capsys.readouterr().err
    assert err.startswith('minionerec: error: could not download file://') and err.count('\n') == 1
    assert not any(p.is_file() for p in (tmp_path/'got2').rglob('*'))
    # prepare prints the counts after each step; a data error is one line, exit 2
    ev, it = shop
    args = ['prepare', '--config', 'tiny', '--run-dir', str(tmp_path/'run'), '--set', 'data.source=interactions', '--set', f'data.interactions={ev}',
            '--set', f'data.items={it}', '--set', 'data.protocol.user_k=3', '--set', 'data.protocol.item_k=2']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'events: 3 items, 4 users; samples train 8 / valid 1 / test 1' in out
    assert 'interactions: 16 read -> 14 after title rules -> 14 after time window -> 14 after k core (0 k-core rounds)' in out
    assert main(args[:-2] + ['--set', 'data.protocol.user_k=9']) == 2
    assert capsys.readouterr().err.count('\n') == 1
    # a dataset name that is a path is refused before anything is written (issue 14, BAD 2)
    monkeypatch.chdir(tmp_path)
    assert main(['prepare', '--config', 'tiny', '--run-dir', 'r2', '--set', 'data.synthetic.name=../../../../../ESCAPED']) == 2
    assert 'is not a dataset name' in capsys.readouterr().err and not (tmp_path/'r2').exists()

def test_readme_yaml_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    "The README's 'your own data' config (on the tiny recipe, for time): two CSV files -> every stage -> a report."
    from minionerec.cli import main
    rng = np.random.default_rng(0)
    titles = [f'{a} {b}' for a in ('Red', 'Blue', 'Green', 'Black', 'White', 'Grey') for b in ('pen', 'ink', 'pad', 'clip', 'file', 'tape',
              'glue', 'ruler', 'stapler', 'marker', 'folder', 'binder', 'eraser', 'sharpener', 'envelope', 'label', 'notebook', 'lamp', 'tray', 'desk')]
    _csv(tmp_path/'items.csv', ['item', 'title'], [(f'SKU{i}', t) for i, t in enumerate(titles)])
    rows = []
    for u in range(160):
        g = rng.integers(6); t = 1_700_000_000 + int(rng.integers(0, 10**7))
        for _ in range(int(rng.integers(5, 12))):
            t += int(rng.integers(3600, 10**6)); i = int(rng.integers(20 * g, 20 * g + 20)) if rng.random() < 0.8 else int(rng.integers(120))
            rows.append((f'c{u}', f'SKU{i}', t))
    _csv(tmp_path/'events.csv', ['customer_id', 'item', 'time'], rows)
    _yaml(tmp_path/'my_data.yaml', 'preset: tiny\nrun_dir: runs/my_data\ndata:\n  source: interactions\n  interactions: events.csv\n'
                                   '  items: items.csv\n  columns: {user: customer_id}\n')
    monkeypatch.chdir(tmp_path)
    assert main(['pipeline', '--config', 'my_data.yaml']) == 0
    assert 'report: runs/my_data/report/report.md' in capsys.readouterr().out
    report = (tmp_path/'runs'/'my_data'/'report'/'report.md').read_text()
    assert 'SASRec' in report and '"counts"' in report and '"after_k_core"' in report
