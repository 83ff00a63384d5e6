#!/usr/bin/env python
"""Execute notebooks in place, every cell including `#| slow` ones, saving their outputs (figures, tables),
then clean them with nbdev-clean. Used by scripts/experiments to regenerate the experiments' results.

    python scripts/run_notebooks.py nbs/21_inductive_bias.ipynb [more.ipynb ...]

A notebook is written only after all of its cells ran without error, so a failure leaves the committed one intact.
"""
import os, sys, time
from pathlib import Path
from fastcore.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

def run(path:Path):
    path = path.absolute()
    cwd = os.getcwd(); os.chdir(path.parent)
    try:
        nb = read_nb(path)
        t = time.perf_counter()
        sh = CaptureShell()
        sh.run_all(nb, exc_stop=True)
        tmp = path.with_suffix('.ipynb.tmp')
        write_nb(nb, tmp); os.replace(tmp, path)
        print(f"ran {path.name} in {(time.perf_counter()-t)/60:.1f} min", flush=True)
    finally: os.chdir(cwd)

if __name__ == '__main__':
    if len(sys.argv) < 2: sys.exit(__doc__)
    for p in sys.argv[1:]:
        if not Path(p).exists(): sys.exit(f"no such notebook: {p}")
    for p in sys.argv[1:]: run(Path(p))
