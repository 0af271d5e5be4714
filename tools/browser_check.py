#!/usr/bin/env python
"""Open pages in Debian's headless Chromium, driven over the DevTools protocol: every request a page makes, failed
loads, JavaScript errors, figures and math, screenshots, and scripted interaction (typing, clicking) for the tests.

    python tools/browser_check.py _docs/*.html runs/demo/sid/sid_explorer.html      # one JSON line per page
    python tools/browser_check.py --shots /tmp/shots _docs/index.html               # also a 1280 px screenshot each

Pages are opened offline: Chromium runs with a host resolver that resolves nothing, and any request that is not for a
local file (or data:/blob:/about:) is reported as `external`. Exit status 1 if any page has an error, a failed or
an external request. Needs Debian's `chromium` (tools/ci_system_deps.sh installs it) and `websocket-client`.
"""
import base64, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--hide-scrollbars',
         '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1', '--remote-allow-origins=*']
LOCAL = ('file:', 'data:', 'blob:', 'about:', 'chrome-error:')

def chromium_path():
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        p = shutil.which(name)
        if p: return p
    return None

class Browser:
    "One headless Chromium with one tab, driven over the DevTools protocol (a websocket on 127.0.0.1)."
    def __init__(self, width:int=1280, height:int=900, timeout:float=60):
        import websocket
        exe = chromium_path()
        if exe is None: raise FileNotFoundError('chromium not found (apt-get install chromium)')
        self.profile = tempfile.mkdtemp(prefix='chromium-')
        self.proc = subprocess.Popen([exe, *FLAGS, f'--user-data-dir={self.profile}', '--remote-debugging-port=0',
                                      f'--window-size={width},{height}', 'about:blank'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = Path(self.profile)/'DevToolsActivePort', time.time()
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.time() - t0 > timeout:
                self.close(); raise RuntimeError(f'chromium did not start (exit {self.proc.returncode})')
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f'ws://127.0.0.1:{port}{path}', timeout=timeout, suppress_origin=True)
        self.timeout, self._id, self.events = timeout, 0, []
        target = self.send('Target.createTarget', url='about:blank')['targetId']
        self.session = self.send('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
        for domain in ('Page', 'Runtime', 'Network'): self.call(f'{domain}.enable')
        self.call('Emulation.setDeviceMetricsOverride', width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.reset()

    # -- protocol
    def send(self, method, session=None, **params):
        self._id += 1; msg = dict(id=self._id, method=method, params=params)
        if session: msg['sessionId'] = session
        self.ws.send(json.dumps(msg)); t0 = time.time()
        while True:
            m = json.loads(self.ws.recv())
            if m.get('id') == self._id:
                if 'error' in m: raise RuntimeError(f'{method}: {m["error"]}')
                return m.get('result', {})
            self._event(m)
            if time.time() - t0 > self.timeout: raise TimeoutError(method)
    def call(self, method, **params): return self.send(method, self.session, **params)
    def _event(self, m):
        meth, p = m.get('method'), m.get('params', {})
        if meth == 'Network.requestWillBeSent': self.requests[p['requestId']] = p['request']['url']
        elif meth == 'Network.loadingFailed':
            if not p.get('canceled'): self.failed.append(f"{self.requests.get(p['requestId'], '?')}: {p.get('errorText')}")
        elif meth == 'Network.responseReceived' and p['response'].get('status', 200) >= 400:
            self.failed.append(f"{p['response']['url']}: HTTP {p['response']['status']}")
        elif meth == 'Runtime.exceptionThrown':
            d = p['exceptionDetails']; self.errors.append((d.get('exception') or {}).get('description') or d.get('text'))
        elif meth == 'Page.loadEventFired': self.loaded = True
    def pump(self, seconds:float):
        "Process events for `seconds`."
        end = time.time() + seconds
        while time.time() < end:
            self.ws.settimeout(max(0.01, end - time.time()))
            try: self._event(json.loads(self.ws.recv()))
            except Exception: pass
        self.ws.settimeout(self.timeout)

    # -- pages
    def reset(self): self.requests, self.failed, self.errors, self.loaded = {}, [], [], False
    def goto(self, url, settle:float=0.5) -> 'Browser':
        "Open `url` (a path or URL), wait for its load event, then let its scripts run for `settle` seconds."
        url = Path(url).resolve().as_uri() if '://' not in str(url) else str(url)
        self.reset(); self.call('Page.navigate', url=url); t0 = time.time()
        while not self.loaded:
            if time.time() - t0 > self.timeout: raise TimeoutError(f'{url}: no load event in {self.timeout}s')
            self.pump(0.05)
        self.pump(settle)
        return self
    def eval(self, expr:str):
        "Value of the JavaScript expression `expr` (promises awaited)."
        r = self.call('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in r: raise RuntimeError(f'{expr[:80]}: {r["exceptionDetails"].get("exception", {}).get("description")}')
        return r['result'].get('value')
    def wait_for(self, expr:str, timeout:float=10):
        "Poll `expr` until it is truthy; its value."
        t0 = time.time()
        while True:
            v = self.eval(expr)
            if v: return v
            if time.time() - t0 > timeout: raise TimeoutError(f'waited {timeout}s for {expr}')
            self.pump(0.1)
    def type(self, selector:str, text:str):
        "Focus `selector` and type `text` as keyboard input (input events fire as for a person)."
        self.eval(f'(e => {{e.focus(); e.value = ""; e.dispatchEvent(new Event("input")); return 1}})(document.querySelector({json.dumps(selector)}))')
        self.call('Input.insertText', text=text); self.pump(0.2)
    def press(self, key:str='Enter'):
        code = {'Enter': 13, 'Escape': 27}[key]
        for t in ('keyDown', 'keyUp'):
            self.call('Input.dispatchKeyEvent', type=t, key=key, code=key, windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)
        self.pump(0.3)
    def click(self, selector:str):
        self.eval(f'document.querySelector({json.dumps(selector)}).click()'); self.pump(0.3)
    def external(self) -> list[str]:
        "Requests for anything but local files since the last `goto`."
        return sorted({u for u in self.requests.values() if not u.startswith(LOCAL)})
    def screenshot(self, path, full_page:bool=False) -> Path:
        kw = {}
        if full_page:
            w, h = self.eval('[document.documentElement.scrollWidth, document.documentElement.scrollHeight]')
            kw = dict(clip=dict(x=0, y=0, width=w, height=min(h, 16000), scale=1), captureBeyondViewport=True)
        data = self.call('Page.captureScreenshot', format='png', **kw)['data']
        Path(path).write_bytes(base64.b64decode(data)); return Path(path)
    def close(self):
        try: self.send('Browser.close')
        except Exception: pass
        try: self.proc.wait(10)
        except Exception: self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
    def __enter__(self): return self
    def __exit__(self, *a): self.close()

PAGE_FACTS = '''(() => ({
  hook_errors: JSON.parse(document.documentElement.getAttribute('data-jserr') || '[]'),
  png_figures: document.querySelectorAll('img[src^="data:image/png"]').length,
  plotly_divs: document.querySelectorAll('.plotly-graph-div').length,
  plotly_rendered: document.querySelectorAll('.plotly-graph-div .main-svg').length,
  math: document.querySelectorAll('.katex').length,
  math_errors: document.querySelectorAll('.katex-error').length,
  raw_math: [...document.querySelectorAll('.jp-RenderedMarkdown')].filter(e => /\\$\\$|\\\\\\[/.test(e.textContent)).length,
  title: document.title}))()'''

def check_page(path, browser:Browser|None=None, settle:float=0.5) -> dict:
    "Open `path` offline: errors (JS and failed loads), external requests, figures and math on the page."
    own = browser is None
    b = browser or Browser()
    try:
        b.goto(path, settle)
        facts = b.eval(PAGE_FACTS)
        errors = b.errors + facts.pop('hook_errors') + [f'failed request {f}' for f in b.failed]
        return dict(page=str(path), errors=errors, external=b.external(), requests=len(b.requests), **facts)
    finally:
        if own: b.close()

if __name__ == '__main__':
    args, shots = sys.argv[1:], None
    if args[:1] == ['--shots']: shots = Path(args[1]); shots.mkdir(parents=True, exist_ok=True); args = args[2:]
    bad = 0
    with Browser() as b:
        for p in args:
            res = check_page(p, b); bad += bool(res['errors'] or res['external'])
            if shots: b.screenshot(shots/(Path(p).stem + '.png'))
            print(json.dumps(res))
    sys.exit(1 if bad else 0)
