__version__ = "0.1.0"

import sys as _sys
if _sys.argv[:1] == ['-m']:        # `python -m minionerec.X` is being located: X without a command line must not exit 0 silently
    from .core import module_main_error as _module_main_error
    if (_msg := _module_main_error()) is not None:
        print(f'error: {_msg}', file=_sys.stderr); raise SystemExit(2)
