"""`python -m minionerec ...` = the `minionerec` console script (written by hand, like `__init__.py`; see nbs/13c_cli.ipynb)."""
import sys
from minionerec.cli import main

if __name__ == '__main__': sys.exit(main())
