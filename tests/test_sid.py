"""SIDIndex, the collision-free builder, the quality report (minionerec.sid) and the SID explorer (minionerec.sid_explorer)."""
import json
from collections import Counter
import numpy as np
import pandas as pd
import pytest
from minionerec.sid import SIDIndex, CodeTrie, build_sid_index, assign_distinct, parse_sid, sid_token
from minionerec.sid_quality import sid_report, report_table
from minionerec.sid_explorer import (sid_tree_nodes, sid_tree_figure, save_explorer_html, sid_explorer, explorer_data,
                                     search_items, level_stats, collision_stats)

INDEX = 'Amazon/index/Industrial_and_Scientific.index.json'
ITEMS = 'Amazon/index/Industrial_and_Scientific.item.json'


class FakeResult:
    "Duck-typed QuantizeResult: codes, last_dists, codebook_sizes."
    def __init__(self, codes, last_dists, codebook_sizes):
        self.codes, self.last_dists, self.codebook_sizes = codes, last_dists, codebook_sizes


def _items(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({'item_id': range(n), 'title': [f'thing {i} kind {i % 7}' for i in range(n)],
                         'brand': [f'b{rng.integers(5)}' for _ in range(n)], 'description': '', 'categories': [[] for _ in range(n)]})


def _check_build(codes, idx, K):
    "Invariants of build_sid_index: unique, prefix-free, first L-1 codes kept, non-colliding items kept."
    L = codes.shape[1]
    assert idx.is_unique() and idx.is_prefix_free()
    assert np.array_equal(idx.codes[:, :L - 1], codes[:, :L - 1])
    assert (idx.codes[:, L - 1] < K).all()
    _, inv, cnt = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    alone = cnt[inv.ravel()] == 1
    assert np.array_equal(idx.codes[alone, :L], codes[alone])


# --- SIDIndex basics ---------------------------------------------------------------------------------------------

def test_tokens_roundtrip_and_lookup():
    codes = np.array([[12, 34, 56], [0, 1, 2], [5, 5, -1]])
    idx = SIDIndex(codes, codebook_sizes=(16, 64, 64))
    assert idx.tokens(0) == ['<a_12>', '<b_34>', '<c_56>'] and idx.sid(2) == '<a_5><b_5>'
    for i in range(3):
        assert idx.item_id(idx.sid(i)) == i and idx.item_id(idx.tokens(i)) == i
        assert parse_sid(idx.sid(i)) == idx.code(i)
    assert idx.sequences() == [idx.tokens(i) for i in range(3)]
    with pytest.raises(KeyError, match=r'<a_1><b_1>'): idx.item_id('<a_1><b_1>')
    with pytest.raises(ValueError, match='should be level'): idx.parse('<b_1>')
    v = idx.vocab()
    assert len(v) == len(set(v)) == 16 + 64 + 64 and v[0] == '<a_0>' and v[16] == '<b_0>' and v[-1] == '<c_63>'


def test_constructor_validation():
    with pytest.raises(ValueError, match='trailing padding'): SIDIndex([[1, -1, 3]])
    with pytest.raises(ValueError, match='no first-level code'): SIDIndex([[-1, -1]])
    with pytest.raises(ValueError, match='2-D'): SIDIndex([1, 2, 3])
    with pytest.raises(ValueError, match='codebook size'): SIDIndex([[3, 0]], codebook_sizes=(3, 1))
    idx = SIDIndex(np.array([[1, 2]]))
    with pytest.raises(ValueError): idx.codes[0, 0] = 5                  # read-only value
    assert SIDIndex([[1, 2]]) == SIDIndex(np.array([[1, 2]], dtype=np.int32)) and 'n_items=1' in repr(idx)


def test_collisions_and_trie():
    idx = SIDIndex([[0, 1, 2], [0, 1, 2], [0, 1, 3], [1, 0, 0]])
    assert not idx.is_unique() and idx.collisions() == {(0, 1, 2): [0, 1]}
    assert idx.item_id('<a_0><b_1><c_2>') == 0 and idx.item_ids('<a_0><b_1><c_2>') == [0, 1]
    t = idx.prefix_trie()
    assert isinstance(t, CodeTrie)
    assert t.children() == [0, 1] and t.children((0, 1)) == [2, 3] and t.count((0,)) == 3
    assert t.leaf_items((0, 1, 2)) == [0, 1] and t.items((0, 1)) == [0, 1, 2] and t.children((9,)) == []
    # every item is reachable by walking children
    for i in range(idx.n_items):
        c = idx.code(i)
        for k in range(len(c)): assert c[k] in t.children(c[:k])


def test_json_roundtrip_and_errors(tmp_path):
    idx = SIDIndex([[3, 1, 4], [1, 5, 9], [2, 6, -1]], codebook_sizes=(8, 8, 16))
    p = idx.to_json(tmp_path / 'index.json')
    assert json.loads(p.read_text()) == {'0': ['<a_3>', '<b_1>', '<c_4>'], '1': ['<a_1>', '<b_5>', '<c_9>'], '2': ['<a_2>', '<b_6>']}
    assert SIDIndex.from_json(p, codebook_sizes=(8, 8, 16)) == idx
    assert [f.name for f in tmp_path.iterdir()] == ['index.json']          # atomic: no temp file left
    bad = tmp_path / 'bad.json'
    bad.write_text('{"0": ["<a_1>"], "x": ["<a_2>"]}')
    with pytest.raises(ValueError, match=r"bad.json: key 'x'"): SIDIndex.from_json(bad)
    bad.write_text('{"0": ["<a_1>", "<c_2>"]}')
    with pytest.raises(ValueError, match=r"bad.json: item '0'.*level 'b'"): SIDIndex.from_json(bad)
    bad.write_text('{"0": 5}')
    with pytest.raises(ValueError, match=r"bad.json: item '0': expected a list"): SIDIndex.from_json(bad)
    bad.write_text('[1, 2]')
    with pytest.raises(ValueError, match='bad.json: expected a mapping'): SIDIndex.from_json(bad)


def test_from_published_recdata_like():
    class Data: name, sids = 'toy', {0: ('<a_1>', '<b_2>', '<c_3>'), 1: ('<a_0>', '<b_0>', '<c_0>')}
    idx = SIDIndex.from_published(Data())
    assert idx.sid(0) == '<a_1><b_2><c_3>' and idx.n_items == 2
    Data.sids = None
    with pytest.raises(ValueError, match='toy: has no published SIDs'): SIDIndex.from_published(Data())


# --- build_sid_index ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('method', ['hungarian', 'sinkhorn', 'nearest'])
def test_assign_distinct_methods(method):
    rng = np.random.default_rng(0)
    C = rng.random((30, 40))
    a = assign_distinct(C, method)
    assert len(set(a.tolist())) == 30 and a.max() < 40


def test_build_random_codes_invariants():
    rng = np.random.default_rng(0)
    K, N = 16, 1500                                                      # 1500 items in 8*8 prefixes: many collisions
    codes = np.c_[rng.integers(0, 8, (N, 2)), rng.integers(0, K, N)]
    dists = rng.random((N, K)).astype(np.float32)
    assert len(np.unique(codes, axis=0)) < N
    idx = build_sid_index(FakeResult(codes, dists, [8, 8, K]))
    _check_build(codes, idx, K)
    assert idx.codebook_sizes[:3] == (8, 8, K)
    assert build_sid_index(codes, dists, (8, 8, K)) == idx              # deterministic, plain arrays accepted


def test_build_identical_codes_overflow_gets_extra_level():
    codes = np.tile([[3, 4, 5]], (600, 1))
    rng = np.random.default_rng(1)
    idx = build_sid_index(codes, rng.random((600, 256)), codebook_sizes=(256, 256, 256))
    _check_build(codes, idx, 256)
    assert idx.n_levels == 4 and idx.codebook_sizes == (256, 256, 256, 3)   # ceil(600/256) = 3 items per code at most
    assert np.bincount(idx.codes[:, 2], minlength=256).max() == 3
    assert set(idx.lengths().tolist()) == {4} and idx.vocab()[-3:] == ['<d_0>', '<d_1>', '<d_2>']
    assert idx.build_info['overflow_prefixes'] == [(3, 4)]


def test_build_overflow_fills_single_codes_first():
    codes = np.tile([[0, 0]], (20, 1))                                    # 20 items, K=16: 4 codes must double up
    idx = build_sid_index(codes, codebook_sizes=(1, 16))
    assert idx.is_unique() and idx.is_prefix_free()
    assert Counter(idx.lengths().tolist()) == {2: 12, 3: 8}


def test_build_one_prefix_with_room_keeps_three_tokens():
    rng = np.random.default_rng(2)
    codes = np.c_[np.zeros((200, 2), int), rng.integers(0, 20, 200)]     # all in one prefix, 200 <= K=256
    dists = rng.random((200, 256))
    for m in ('hungarian', 'sinkhorn', 'nearest'):
        idx = build_sid_index(codes, dists, (1, 1, 256), method=m)
        _check_build(codes, idx, 256)
        assert idx.n_levels == 3 and set(idx.lengths().tolist()) == {3}


def test_build_keeps_nearest_collider_and_moves_others_to_nearest_free_code():
    codes = np.array([[0, 5], [0, 5], [0, 1]])
    d = np.array([[0.5, 9, 9, 9, 0.6, 1.0], [9, 9, 9, 9, 9, 0.1], [9, 0, 9, 9, 9, 9]], float)
    idx = build_sid_index(codes, d, (1, 6))
    assert idx.codes[:, 1].tolist() == [0, 5, 1]                         # item 1 (closest to 5) keeps 5; item 0 takes 0
    assert idx.build_info['moved'] == [0]


def test_build_no_collisions_is_identity_and_rejects_bad_input():
    codes = np.array([[0, 1, 2], [0, 1, 3], [1, 1, 2]])
    assert np.array_equal(build_sid_index(codes, codebook_sizes=(2, 2, 4)).codes, codes)
    with pytest.raises(ValueError, match='last_dists must be'): build_sid_index(codes, np.zeros((2, 4)))
    with pytest.raises(ValueError, match='raw quantizer codes'): build_sid_index(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="method must be"): build_sid_index(np.zeros((2, 2), int), method='magic')


# --- report and explorer -----------------------------------------------------------------------------------------

def test_report_groups_similar_items():
    rng = np.random.default_rng(0)
    n, cl = 300, rng.integers(0, 6, 300)
    emb = rng.normal(size=(6, 8))[cl] + 0.2 * rng.normal(size=(n, 8))
    items = _items(n); items['brand'] = [f'brand{c}' for c in cl]
    idx = build_sid_index(np.c_[cl, rng.integers(0, 8, (n, 2))], codebook_sizes=(6, 8, 8))
    r = sid_report(idx, items, emb, n_pairs=2000)
    assert r['colliding_items'] == 0 and r['unique_sids'] == n and r['levels'][0]['codes_used'] == 6
    assert r['levels'][0]['items_per_prefix']['max'] >= r['levels'][0]['items_per_prefix']['mean']
    assert r['semantic']['same_a']['cosine'] > 0.8 and r['semantic']['random']['cosine'] < 0.5
    assert r['semantic']['same_a']['same_brand'] == 1.0
    table = report_table({'x': r, 'y': sid_report(SIDIndex([[0, 0]] * 3 + [[1, 0]]))})
    assert '| colliding items (N - unique) | 0 | 2 |' in table


def test_tree_figure_bounded_and_html(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 40, (3000, 3))
    idx = build_sid_index(codes, codebook_sizes=(40, 40, 40))
    items = _items(3000)
    nodes = sid_tree_nodes(idx, items, max_children=5)
    assert len(nodes) <= 1 + 6 + 6 * 5 + 6 * 5 * 5 + 30                 # bounded whatever N
    assert nodes.set_index('id').loc['all', 'count'] == 3000
    for pid, grp in nodes.groupby('parent'):                             # children cover their parent exactly
        if pid: assert grp['count'].sum() == nodes.set_index('id').loc[pid, 'count']
    fig = sid_tree_figure(idx, items, max_children=5, kind='treemap')
    assert fig.data[0].type == 'treemap'
    p = save_explorer_html(idx, items, tmp_path / 'x' / 'explorer.html', raw_codes=codes)
    txt = p.read_text()
    assert txt.startswith('<!DOCTYPE html>') and '<script src' not in txt and 'cdn.' not in txt   # one offline file
    assert '"colliding_items_before":' in txt and idx.sid(0).replace('<', '\\u003c') not in txt     # codes travel as numbers


def test_explorer_widget_driven_programmatically():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 2, 3]])
    idx = SIDIndex(codes, (2, 3, 4))
    items = _items(5)
    ex = sid_explorer(idx, items)
    assert ex.prefix == [] and ex.item == -1 and ex.listed_items() == [0, 1, 2, 3, 4]
    ex.select(0)
    assert ex.listed_items() == [0, 1, 2]
    ex.select(0, 0)
    assert ex.listed_items() == [0, 1]
    ex.show(4)                                                           # an item: its parent prefix, the item marked
    assert (ex.prefix, ex.item, ex.listed_items()) == ([1, 2], 4, [4])
    assert ex.search('thing 1 kind 1') == [1] and ex.query == 'thing 1 kind 1'
    with pytest.raises(KeyError, match='<a_1><b_1>'): ex.select(1, 1)
    with pytest.raises(IndexError): ex.show(9)
    ex.select()
    assert ex.prefix == [] and ex.item == -1
    bundle = ex._repr_mimebundle_()
    assert 'application/vnd.jupyter.widget-view+json' in bundle and 'sidExplorerStatic' in bundle['text/html']


def test_explorer_data_and_search():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 2, 3]])
    idx = build_sid_index(np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 2, 3]]), codebook_sizes=(2, 3, 4))
    d = explorer_data(idx, _items(5), raw_codes=np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 2, 3]]))
    assert d['collisions'] == dict(colliding_items_before=1, moved=1, extended=0, overflow_prefixes=0, colliding_items_after=0)
    assert d['moved'] == idx.build_info['moved'] and d['codes'][4] == [1, 2, 3]
    assert set(d['reps']) == {'', '0', '0,0', '1'}                      # prefixes with more than one item
    assert search_items(d, '3') == [3] and search_items(d, 'kind 1') == [1]
    assert search_items(d, '<a_1>') == [3, 4] and search_items(d, '<a_1><b_2><c_3>') == [4] and search_items(d, '') == []
    st = level_stats(SIDIndex(codes, (2, 3, 4)))
    assert st.nodes.tolist() == [2, 4, 5] and st.codes_used.tolist() == [2, 3, 3] and st.children_per_parent_max.tolist() == [2, 2, 2]
    assert collision_stats(SIDIndex(codes))['colliding_items_before'] is None
    with pytest.raises(ValueError, match='raw_codes has 2 rows'): collision_stats(idx, codes[:2])


# --- real data ---------------------------------------------------------------------------------------------------

def test_published_index(amazon_root, tmp_path):
    path = amazon_root / INDEX
    pub = SIDIndex.from_json(path)
    assert pub.n_items == 3686 and len(pub._table()) == 3670 and pub.n_items - len(pub._table()) == 16
    assert pub.is_prefix_free()
    info = {int(l.split('\t')[2]): l.split('\t')[0] for l in next((amazon_root / 'Amazon' / 'info').glob('Industrial*.txt')).read_text().splitlines() if l}
    assert all(pub.sid(i) == s for i, s in info.items())                 # agrees with the info file
    pub.to_json(tmp_path / 'pub.json')
    assert (tmp_path / 'pub.json').read_text().rstrip('\n') == path.read_text().rstrip('\n')


def test_published_codes_resolved(amazon_root):
    pub = SIDIndex.from_json(amazon_root / INDEX)
    fixed = build_sid_index(pub.codes, codebook_sizes=(256, 256, 256))
    _check_build(pub.codes, fixed, 256)
    assert len(fixed.build_info['moved']) == 16 and fixed.n_levels == 3
    meta = json.loads((amazon_root / ITEMS).read_text())
    items = pd.DataFrame([{'item_id': int(k), 'title': v['title'], 'brand': v['brand']} for k, v in meta.items()])
    r = {'published': sid_report(pub, items, n_pairs=3000), 'ours': sid_report(fixed, items, n_pairs=3000)}
    assert (r['published']['colliding_items'], r['ours']['colliding_items']) == (16, 0)
    # published prefixes group items: same first+second code -> same brand far more often than random pairs
    assert r['published']['semantic']['same_ab']['same_brand'] > 10 * r['published']['semantic']['random']['same_brand']
    ex = sid_explorer(fixed, items, raw_codes=pub.codes)
    ex.show(0)
    assert 0 in ex.listed_items() and ex.data['collisions']['colliding_items_before'] == 16
