"""Run Python code in a fresh interpreter where Ray cannot be imported (for the Ray-free packages)."""
from __future__ import annotations

import subprocess
import sys

NO_RAY = "import sys; sys.modules['ray'] = None\n"  # any 'import ray' now raises ImportError
RAY_LOADED = "[m for m in sys.modules if sys.modules[m] is not None and m.split('.')[0] == 'ray']"


def run_without_ray(code: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """``code`` run after Ray is made unimportable; ``RAY_LOADED`` in it lists the Ray modules loaded."""
    return subprocess.run([sys.executable, "-c", NO_RAY + code], capture_output=True, text=True, timeout=timeout_s)
