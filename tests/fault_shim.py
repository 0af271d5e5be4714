"""The fault shim (issue 24): copied as `sitecustomize.py` into a folder put first on the PYTHONPATH of a pipeline
subprocess, so it runs before the pipeline imports anything. It counts the write operations aimed at the run folder or
the cache and, when asked, injects a fault at the k-th one of a stage (the SQLite way: every I/O operation in turn).

Counted operations: `open`/`io.open`/`Path.open` in a writing mode, `os.replace`, `os.rename`, and the writers of
compiled code reached through the project's own save calls: `torch.save`, `safetensors.torch.save_file`, and the
tokenizer's Rust `Tokenizer.save` (through transformers' `_save_pretrained`). Nested operations count too (a
`save_pretrained` opens `tokenizer_config.json` itself).

Environment:
  MINIONEREC_FAULT_RUN     the run folder (writes under it are attributed to the stage folder they land in)
  MINIONEREC_FAULT_ROOTS   more folders whose writes count (the cache), `os.pathsep`-separated
  MINIONEREC_FAULT_LOG     a JSON-lines file: every counted operation (counting run) or the one fault injected
  MINIONEREC_FAULT_STAGE, MINIONEREC_FAULT_AT, MINIONEREC_FAULT_KIND   inject `kind` at the AT-th operation of STAGE:
      kill     SIGKILL to itself before the operation (a power cut as far as the process is concerned)
      sigterm  SIGTERM to itself before the operation (what a scheduler sends), then the operation goes on
      enospc   the operation fails as a full disk makes it fail (a real `torch.save` into /dev/full; safetensors and
               tokenizers raise what their Rust writers raise, with the same words; Python's own calls raise OSError)
      eio      the same with an I/O error (EIO)
"""
import builtins, errno, io, json, os, signal, sys
import importlib.abc

_env = os.environ.get
_RUN = os.path.realpath(_env('MINIONEREC_FAULT_RUN', '/nonexistent'))
_ROOTS = [_RUN] + [os.path.realpath(p) for p in (_env('MINIONEREC_FAULT_ROOTS') or '').split(os.pathsep) if p]
_LOG, _STAGE, _KIND = _env('MINIONEREC_FAULT_LOG'), _env('MINIONEREC_FAULT_STAGE'), _env('MINIONEREC_FAULT_KIND', 'kill')
_AT = int(_env('MINIONEREC_FAULT_AT') or 0)
_STAGES = ('prepare', 'embed', 'sid', 'sft', 'evaluate', 'rl', 'dpo', 'report')
_open, _replace, _rename = builtins.open, os.replace, os.rename
_state = {'stage': 'setup', 'n': {}, 'fired': False}

def _log(rec):
    if not _LOG: return
    with _open(_LOG, 'a') as f: f.write(json.dumps(rec) + '\n'); f.flush(); os.fsync(f.fileno())

def _op(op, path, raise_as=None):
    "Count one operation on `path`; inject the fault when it is the chosen one."
    if path is None or isinstance(path, int): return
    try: p = os.path.realpath(os.fspath(path))
    except TypeError: return
    if not any(p == r or p.startswith(r + os.sep) for r in _ROOTS): return
    rel = os.path.relpath(p, _RUN)
    if not rel.startswith('..') and rel.split(os.sep)[0] in _STAGES: _state['stage'] = rel.split(os.sep)[0]
    st = _state['stage']; n = _state['n'][st] = _state['n'].get(st, 0) + 1
    rec = {'stage': st, 'k': n, 'op': op, 'path': p}
    if not _AT: _log(rec); return
    if _state['fired'] or st != _STAGE or n != _AT: return
    _state['fired'] = True; _log({**rec, 'kind': _KIND})
    if _KIND == 'kill': os.kill(os.getpid(), signal.SIGKILL)
    elif _KIND == 'sigterm': os.kill(os.getpid(), signal.SIGTERM)
    else:
        code = errno.ENOSPC if _KIND == 'enospc' else errno.EIO
        if raise_as is not None: raise_as(code)
        raise OSError(code, os.strerror(code), p)

def open(file, mode='r', *a, **k):
    if isinstance(mode, str) and any(c in mode for c in 'wax+'): _op('open', file)
    return _open(file, mode, *a, **k)

def replace(src, dst, *a, **k): _op('os.replace', dst); return _replace(src, dst, *a, **k)
def rename(src, dst, *a, **k): _op('os.rename', dst); return _rename(src, dst, *a, **k)
builtins.open = io.open = open
os.replace, os.rename = replace, rename

def _rust_io(code):   # how a Rust writer's std::io::Error reads
    kind = 'StorageFull' if code == errno.ENOSPC else 'Uncategorized'
    return f'Os {{ code: {code}, kind: {kind}, message: "{os.strerror(code)}" }}'

def _patch_torch(m):
    save = m.save
    def torch_save(obj, f, *a, **k):
        def fail(code):
            if code == errno.ENOSPC:
                with _open('/dev/full', 'wb') as full: save(obj, full, *a, **k)    # torch's own failure on a full disk
            raise OSError(code, os.strerror(code), getattr(f, 'name', f))
        _op('torch.save', getattr(f, 'name', f), fail); return save(obj, f, *a, **k)
    m.save = torch_save

def _patch_safetensors(m):
    save_file = m.save_file
    def st_save_file(tensors, filename, *a, **k):
        def fail(code):
            from safetensors import SafetensorError
            raise SafetensorError(f'Error while serializing: IoError({_rust_io(code)})')
        _op('safetensors.save_file', filename, fail); return save_file(tensors, filename, *a, **k)
    m.save_file = st_save_file

def _patch_tokenizers(m):
    cls = m.TokenizersBackend; orig = cls._save_pretrained
    def _save_pretrained(self, save_directory, *a, **k):
        def fail(code): raise Exception(f'{os.strerror(code)} (os error {code})')   # what tokenizers' Tokenizer.save raises
        _op('tokenizer.save', os.path.join(str(save_directory), 'tokenizer.json'), fail)
        return orig(self, save_directory, *a, **k)
    cls._save_pretrained = _save_pretrained

_PATCH = {'torch': _patch_torch, 'safetensors.torch': _patch_safetensors,
          'transformers.tokenization_utils_tokenizers': _patch_tokenizers}

class _Hook(importlib.abc.MetaPathFinder):
    "Patch a module right after it is first imported (before anyone does `from module import name`)."
    def find_spec(self, name, path, target=None):
        if name not in _PATCH: return None
        for f in sys.meta_path:
            if f is self or not hasattr(f, 'find_spec'): continue
            spec = f.find_spec(name, path, target)
            if spec is not None: break
        else: return None
        run = spec.loader.exec_module
        def exec_module(module): run(module); _PATCH[name](module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())
