import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Use the in-tree package unless an installed one is requested (FLASHGDN_TEST_INSTALLED=1).
if os.environ.get("FLASHGDN_TEST_INSTALLED", "0") == "0":
    sys.path.insert(0, str(ROOT / "python"))
