"""Execute the notebooks in place, with their full settings, so that the committed copies show
their tables and plots to a reader browsing the repository.

    python examples/execute.py            # every notebook here
    python examples/execute.py 05         # the ones whose name starts with 05

CI runs every notebook again on smaller settings (tests/test_notebooks.py, RELPOS_NB_FAST=1)
without writing them, so the committed outputs cannot hide a notebook that no longer runs;
tests/test_notebooks.py also checks that every committed code cell has been executed, in order,
without an error. Re-run this script when a notebook or what it shows changes.
"""
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def main(argv):
    prefixes = argv or [""]
    paths = [p for p in sorted(HERE.glob("*.ipynb")) if any(p.name.startswith(x) for x in prefixes)]
    env_before = dict(os.environ)
    os.environ.pop("RELPOS_NB_FAST", None)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ["PYTHONPATH"] = str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            t0 = time.perf_counter()
            nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3",
                                    resources={"metadata": {"path": str(HERE)}}).execute()
            nbformat.write(nb, path)
            print(f"{path.name}: executed in {time.perf_counter() - t0:.0f} s")
    finally:
        os.environ.clear()
        os.environ.update(env_before)


if __name__ == "__main__":
    main(sys.argv[1:])
