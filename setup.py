"""setuptools entry point; every setting lives in settings.ini (nbdev 2 layout)."""
from configparser import ConfigParser
from pathlib import Path
import shlex, shutil
import setuptools
from setuptools.command.build_py import build_py

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = ('version description keywords author author_email license git_url lib_name '
            'min_python requirements dev_requirements console_scripts').split()
missing = [k for k in expected if k not in cfg]
if missing: raise SystemExit(f'settings.ini: missing keys {missing}')

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[cfg['license']]
requirements = shlex.split(cfg.get('requirements', ''))
extras = {name: shlex.split(cfg.get(f'{name}_requirements', '')) for name in ('dev', 'notebook', 'tracking', 'gpu')}
console_scripts = [s for s in cfg.get('console_scripts', '').split() if s]

class build_py_with_configs(build_py):
    """Ship the repository's `configs/` inside the package (`minionerec/configs/`), so presets' YAML files and the
    accelerate/DeepSpeed configs come with a wheel; `minionerec.core.packaged_configs_dir` finds them."""
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent/'configs'
        if self.editable_mode or not src.is_dir(): return        # editable installs read the checkout's configs/
        dest = Path(self.build_lib)/cfg['lib_path']/'configs'
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.suffix in ('.yaml', '.yml', '.json'): shutil.copy2(f, dest/f.name)

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=lic[0],
    classifiers=['Programming Language :: Python :: 3', 'License :: ' + lic[1],
                 'Intended Audience :: Science/Research', 'Natural Language :: English'],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['minionerec', 'minionerec.*']),
    include_package_data=True,
    package_data={'minionerec': ['assets/*']},
    cmdclass={'build_py': build_py_with_configs},
    license_files=['LICENSE'],
    install_requires=requirements,
    extras_require=extras,
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    author=cfg['author'], author_email=cfg['author_email'],
    description=cfg['description'], keywords=cfg['keywords'],
)
