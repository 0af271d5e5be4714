"""From a trained run to recommendations: an export loaded in a fresh process reproduces the report's top-10, the
`recommend` / `export` commands, items added after training, and run folders of an older layout."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = 'stages=[prepare,embed,sid,sft,evaluate]'
NO_BASELINES = [a for b in ('sasrec', 'gru4rec', 'mf', 'tiger', 'hstu') for a in ('--set', f'baselines.{b}=null')]

def env():
    return {**os.environ, 'OMP_WAIT_POLICY': 'PASSIVE', 'HF_HUB_OFFLINE': '1', 'MINIONEREC_QUIET': '1', 'TOKENIZERS_PARALLELISM': 'false',
            'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', '')}

def cli(*args, cwd=None, timeout=900):
    return subprocess.run([sys.executable, '-c', 'import sys; from minionerec.cli import main; sys.exit(main())', *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env(), timeout=timeout)

@pytest.fixture(scope='module')
def served(tmp_path_factory):
    "A tiny run (prepare to evaluate, no baselines but popularity) and its export, both written by the commands."
    root = tmp_path_factory.mktemp('serve')
    run, dest = root/'run', root/'export'
    r = cli('pipeline', '--config', 'tiny', '--run-dir', run, '--set', STAGES, '--set', 'eval.valid_too=false', *NO_BASELINES)
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli('export', run, dest)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'exported {run} to {dest}' in r.stdout
    return run, dest

def test_export_reproduces_report_top10_in_fresh_process(served):
    run, dest = served
    from minionerec.data import load_published
    top = pd.read_csv(run/'evaluate'/'top10.csv')
    hist = load_published(run/'prepare'/'data').splits['test']['history']
    batch = 8                                                   # the evaluation's batch size (tiny): rows decoded together as there
    sample = top.iloc[batch:3 * batch]                          # two of the report's batches
    script = ('import json, sys\nfrom minionerec.serve import load_servable, recommend\n'
              'sv = load_servable(sys.argv[1])\nhs = json.loads(sys.argv[2])\n'
              'print(json.dumps([r["item_id"].tolist() for r in recommend(sv, hs, k=10)]))')
    hs = [list(map(int, hist.iloc[int(i)])) for i in sample['row']]
    r = subprocess.run([sys.executable, '-c', script, str(dest), json.dumps(hs)], capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == sample[[f'top{j}' for j in range(1, 11)]].to_numpy().tolist()

def test_export_folder_and_model_card(served):
    run, dest = served
    assert {'model.safetensors', 'tokenizer.json', 'index.json', 'items.json', 'quantizer.pt', 'serve.json', 'README.md'} <= {p.name for p in dest.iterdir()}
    assert json.loads((dest/'index.json').read_text()) == json.loads((run/'sid'/'index.json').read_text())
    card = (dest/'README.md').read_text()
    metrics = json.loads((run/'evaluate'/'metrics.json').read_text())['MiniOneRec SFT']
    assert f"| MiniOneRec SFT (this model) | {metrics['HR@5']:.4f} | {metrics['NDCG@5']:.4f} | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} |" in card
    for part in ('## Prompt format', '### Response:', 'AutoModelForCausalLM.from_pretrained', 'StructuredOutputsParams(choice=sids)',
                 'Plain serving has no SID constraint'):
        assert part in card, part

def test_recommend_command_ids_titles_exclusions(served, tmp_path):
    run, dest = served
    items = json.loads((dest/'items.json').read_text())
    (tmp_path/'gone.txt').write_text(f"# retired\n{items[4]['title']}\n")
    r = cli('recommend', dest, '--history', 1, items[2]['title'], 3, '--k', 20, '--exclude', 5, f'@{tmp_path}/gone.txt', '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out['history'] == [1, 2, 3] and len(out['items']) == 20
    assert not {4, 5} & {i['item_id'] for i in out['items']}
    assert all(i['title'] == items[i['item_id']]['title'] for i in out['items'])
    scores = [i['score'] for i in out['items']]
    assert scores == sorted(scores, reverse=True)
    r = cli('recommend', run, '--user', 'nobody')
    assert r.returncode == 2 and "user 'nobody' is not in the data of this run" in r.stderr
    r = cli('recommend', dest, '--history', 'no such title at all')
    assert r.returncode == 2 and "'no such title at all' is neither an item id nor a title of the catalogue" in r.stderr

def test_new_items_get_sids_and_can_be_recommended(served, tmp_path):
    run, dest = served
    items = json.loads((dest/'items.json').read_text())
    pd.DataFrame({'title': [items[0]['title'] + ' mk2', items[7]['title'] + ' travel size']}).to_csv(tmp_path/'new.csv', index=False)
    n = len(items)
    r = cli('recommend', dest, '--history', 0, 7, '--new-items', tmp_path/'new.csv', '--k', n + 2, '--beams', n + 2, '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)['items']
    assert len(out) == n + 2 and sorted(i['item_id'] for i in out) == list(range(n + 2))   # every item ranked once, the new ones too
    new = [i for i in out if i['new']]
    assert [i['item_id'] for i in sorted(new, key=lambda i: i['item_id'])] == [n, n + 1]
    old_sids = {''.join(v) for v in json.loads((dest/'index.json').read_text()).values()}
    assert not {i['sid'] for i in new} & old_sids

def test_older_layout_names_the_stage_to_rerun(served, tmp_path):
    run, _ = served
    old = tmp_path/'old'; shutil.copytree(run, old)
    rec = json.loads((old/'sid'/'DONE.json').read_text()); rec.pop('layout')
    (old/'sid'/'DONE.json').write_text(json.dumps(rec))
    want = f'{old}/sid was written by an older minionerec (run-folder layout 0; this version needs layout 1 there'
    for args in (('recommend', old, '--history', 1), ('export', old, tmp_path/'exp'),
                 ('evaluate', '--config', 'tiny', '--run-dir', old, '--set', STAGES, '--set', 'eval.valid_too=false', *NO_BASELINES)):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        err = r.stderr.strip().splitlines()[-1]
        assert want in err and err.endswith('rerun the sid stage: minionerec sid --force (with the same --config and --set)'), err
