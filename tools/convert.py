"""Convert an HF BERT folder: ``python tools/convert.py SRC DST`` == ``python -m mpee_ref convert SRC DST``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mpee_ref.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
