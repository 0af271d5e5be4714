#!/usr/bin/env python
"""Open rendered pages in headless Chromium and report JavaScript errors, static figures and rendered plotly plots.

    python tools/browser_check.py _docs/*.html runs/demo/sid/sid_explorer.html

A page's JavaScript errors are collected by a small hook (`render_docs.ERROR_HOOK`, injected into a temporary copy of
pages that lack it) and read back from Chromium's DOM dump after the page's scripts ran. Exit status 1 if any page has
an error. Needs Debian's `chromium` (tools/ci_system_deps.sh installs it).
"""
import json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from render_docs import ERROR_HOOK

FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--hide-scrollbars']

def chromium_path():
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        p = shutil.which(name)
        if p: return p
    return None

def check_page(path, budget_ms:int=10000, timeout:int=120) -> dict:
    "DOM-dump `path` after its scripts ran: JS errors, inline PNG figures, plotly plots present and rendered."
    path = Path(path).resolve(); exe = chromium_path()
    if exe is None: raise FileNotFoundError('chromium not found (apt-get install chromium)')
    text = path.read_text(encoding='utf-8', errors='replace')
    target = path
    if 'data-jserr' not in text:
        target = path.with_name(f'.check.{path.name}')
        hooked = re.sub(r'(<head[^>]*>)', lambda m: m.group(1) + ERROR_HOOK, text, count=1) if '<head' in text else ERROR_HOOK + text
        target.write_text(hooked, encoding='utf-8')
    with tempfile.TemporaryDirectory() as prof:
        try:
            r = subprocess.run([exe, *FLAGS, f'--user-data-dir={prof}', f'--virtual-time-budget={budget_ms}', '--dump-dom',
                                target.as_uri()], capture_output=True, text=True, timeout=timeout)
        finally:
            if target != path: target.unlink(missing_ok=True)
    dom = r.stdout
    m = re.search(r"data-jserr=\"([^\"]*)\"", dom)
    errors = json.loads(m.group(1).replace('&quot;', '"')) if m else []
    if r.returncode != 0 or not dom.strip(): errors.append(f'chromium exited {r.returncode}: {r.stderr[-500:]}')
    return {'page': str(path), 'errors': errors, 'png_figures': len(re.findall(r'<img[^>]+src="data:image/png', dom)),
            'plotly_divs': dom.count('plotly-graph-div'), 'plotly_rendered': dom.count('class="main-svg"'), 'bytes': len(dom)}

if __name__ == '__main__':
    bad = 0
    for p in sys.argv[1:]:
        res = check_page(p); bad += bool(res['errors'])
        print(json.dumps(res))
    sys.exit(1 if bad else 0)
