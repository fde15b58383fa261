"""``python -m mpee_ref.vectors check --adapter my_port.py``: see :mod:`mpee_ref.vectors.check`."""
import sys

from .check import main

sys.exit(main())
