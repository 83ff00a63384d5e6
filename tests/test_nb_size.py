"""Notebooks stay light and clean: each ≤ 1 MB, each embedded image ≤ 100 KB, and `nbdev-clean` changes nothing."""
import base64, json, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_MAX = 1_000_000   # bytes per notebook
IMG_MAX = 100 * 1024  # bytes per embedded image, decoded
IMG_MIMES = ('image/png', 'image/jpeg', 'image/gif', 'image/webp', 'image/svg+xml')
HOW = ('save figures small (figsize about 6x4, dpi about 80, PNG), keep fewer outputs, '
       'and clean with `nbdev-clean` before committing')


def _notebooks():
    nbs = ROOT / 'nbs'
    return sorted(p for p in nbs.rglob('*.ipynb') if not any(part.startswith(('.', '_')) for part in p.relative_to(nbs).parts))


def _images(nb):
    "Each embedded image: (cell index, where, decoded size in bytes)."
    for i, c in enumerate(nb['cells']):
        for j, o in enumerate(c.get('outputs', [])):
            for mime in IMG_MIMES:
                data = o.get('data', {}).get(mime)
                if data is None: continue
                data = ''.join(data) if isinstance(data, list) else data
                n = len(data.encode()) if mime == 'image/svg+xml' else len(base64.b64decode(data))
                yield i, f'output {j} {mime}', n
        for name, att in (c.get('attachments') or {}).items():
            for mime, data in att.items():
                yield i, f'attachment {name}', len(base64.b64decode(''.join(data) if isinstance(data, list) else data))


def test_there_are_notebooks():
    assert _notebooks(), 'no notebooks in nbs/'


def test_notebooks_are_small():
    big = [f'{p.relative_to(ROOT)}: {p.stat().st_size/1e6:.2f} MB' for p in _notebooks() if p.stat().st_size > NB_MAX]
    assert not big, f'notebooks over {NB_MAX/1e6:.0f} MB:\n' + '\n'.join(big) + f'\nTo fix: {HOW}.'


def test_images_are_small():
    big = [f'{p.relative_to(ROOT)} cell {i} {where}: {n/1024:.0f} KB'
           for p in _notebooks() for i, where, n in _images(json.loads(p.read_text())) if n > IMG_MAX]
    assert not big, f'embedded images over {IMG_MAX//1024} KB:\n' + '\n'.join(big) + f'\nTo fix: {HOW}.'


def test_notebooks_are_clean(tmp_path):
    "nbdev-clean, run on copies with the project's settings, leaves every notebook byte for byte as committed."
    exe = Path(sys.executable).parent / 'nbdev-clean'
    if not exe.exists(): exe = shutil.which('nbdev-clean')
    assert exe, 'nbdev-clean not found: install the dev extra (pip install -e ".[dev]")'
    nbs = _notebooks()
    copies = {}
    for p in nbs:
        c = tmp_path / p.relative_to(ROOT / 'nbs')
        c.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, c); copies[p] = c
    r = subprocess.run([str(exe), '--fname', str(tmp_path)], cwd=ROOT, capture_output=True, text=True)  # cwd: the project's config
    assert r.returncode == 0, r.stderr
    dirty = [str(p.relative_to(ROOT)) for p, c in copies.items() if c.read_bytes() != p.read_bytes()]
    assert not dirty, (f'notebooks that nbdev-clean would change: {dirty}. Run `.venv/bin/nbdev-clean` and commit '
                       '(scripts/setup installs git hooks that do it on commit).')
