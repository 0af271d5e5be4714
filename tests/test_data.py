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
