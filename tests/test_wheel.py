"""Import without the tools: build a wheel, install it in a fresh virtual environment without nbdev or jupyter,
import every module, build a preset and run it, and run each console script's `--help`.

Everything is made anew in a temporary folder on each run (the wheel, the venv); only pip's own download/wheel cache
is reused. torch and torchvision are pinned to the versions of the environment running the tests, so pip installs the
same (local) builds rather than whatever else an index offers. Set VIT_NB_SKIP_WHEEL=1 to skip (quick local runs)."""
import importlib.metadata as md, json, os, shutil, subprocess, sys, tempfile, time, tomllib, venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = 'vit_nb'
DEV_TOOLS = ['nbdev', 'execnb', 'jupyter', 'jupyterlab', 'jupyter_server', 'notebook', 'ipykernel']  # must NOT be installed
SKIP_IMPORT = {}   # module: reason, for modules that need an extra to import (none today: keep it that way)
PINNED = ['torch', 'torchvision']
TIMINGS = {}

pytestmark = pytest.mark.skipif(os.environ.get('VIT_NB_SKIP_WHEEL') == '1', reason='VIT_NB_SKIP_WHEEL=1')


def _run(cmd, phase, timeout, **kw):
    "Run `cmd`, record its time under `phase`, and fail with its output if it fails."
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    TIMINGS[phase] = TIMINGS.get(phase, 0) + time.perf_counter() - t0
    assert r.returncode == 0, f'{phase} failed ({" ".join(map(str, cmd))}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}'
    return r


def _clean_env():
    "The environment minus anything that would let the venv see the checkout or the dev venv."
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV', 'PYTHONSTARTUP')}
    env['PATH'] = os.pathsep.join(p for p in env.get('PATH', '').split(os.pathsep) if '.venv' not in p)
    return env


@pytest.fixture(scope='module')
def wheel_env():
    "A fresh venv in a temporary folder with the freshly built wheel installed; the folder (~6 GB) is removed after."
    tmp = Path(tempfile.mkdtemp(prefix='vit_nb_wheel_'))
    try: yield _make_env(tmp)
    finally:
        if os.environ.get('VIT_NB_KEEP_WHEEL_ENV') != '1': shutil.rmtree(tmp, ignore_errors=True)


def _make_env(tmp):
    # 1. build from a copy of the sources, so the checkout gets no build/ or egg-info
    src = tmp / 'src'
    src.mkdir()
    for f in ('pyproject.toml', 'README.md', 'LICENSE'):
        if (ROOT / f).exists(): shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / PKG, src / PKG, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    _run([sys.executable, '-m', 'build', '--wheel', '--outdir', tmp / 'dist', src], 'build wheel', 600)
    wheels = list((tmp / 'dist').glob(f'{PKG}-*.whl'))
    assert len(wheels) == 1, f'expected one wheel, got {wheels}'
    # 2. a fresh venv: no system site-packages, nothing from the dev venv
    t0 = time.perf_counter()
    venv.EnvBuilder(with_pip=True, clear=True, system_site_packages=False).create(tmp / 'venv')
    TIMINGS['create venv'] = time.perf_counter() - t0
    bindir = tmp / 'venv' / ('Scripts' if os.name == 'nt' else 'bin')
    py = bindir / 'python'
    # 3. install the wheel with its runtime dependencies; torch/torchvision pinned to the running environment's builds
    cons = tmp / 'constraints.txt'
    cons.write_text(''.join(f'{p}=={md.version(p)}\n' for p in PINNED))
    _run([py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', '--no-compile', '-c', cons, wheels[0]],
         'pip install wheel', 1500, env=_clean_env(), cwd=tmp)
    mods = sorted(p.stem for p in (src / PKG).glob('*.py'))
    return dict(py=py, bin=bindir, wheel=wheels[0], mods=mods, report=_probe(py, tmp, mods))


def _probe(py, cwd, mods):
    "One interpreter in the venv: which dev tools are importable, which modules fail to import, a preset's forward."
    code = f"""
import importlib, importlib.util, json, traceback
out = dict(dev_tools=[m for m in {DEV_TOOLS!r} if importlib.util.find_spec(m) is not None], bad={{}})
import {PKG}
out['file'] = {PKG}.__file__
for m in {[m for m in mods if m != '__init__' and m not in SKIP_IMPORT]!r}:
    try: importlib.import_module('{PKG}.' + m)
    except Exception: out['bad'][m] = traceback.format_exc(limit=4)
try:
    import torch
    from {PKG}.model import create_vit
    from {PKG}.hybrid import create_hybrid
    with torch.no_grad():
        out['vit'] = list(create_vit('vit_mini_patch4_28').eval()(torch.randn(2, 1, 28, 28)).shape)
        out['hybrid'] = list(create_hybrid('vit_mini_resnet18_s4_32').eval()(torch.randn(2, 3, 32, 32)).shape)
except Exception: out['forward_error'] = traceback.format_exc(limit=6)
print(json.dumps(out))"""
    r = _run([py, '-c', code], 'import + forward in the venv', 600, env=_clean_env(), cwd=cwd)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_wheel_contents(wheel_env):
    "The wheel holds every module of the package it was built from, and no notebooks."
    import zipfile
    names = zipfile.ZipFile(wheel_env['wheel']).namelist()
    missing = [m for m in wheel_env['mods'] if f'{PKG}/{m}.py' not in names]
    assert not missing, f'modules missing from the wheel: {missing}: check [tool.setuptools.packages.find] in pyproject.toml'
    assert not [n for n in names if n.endswith('.ipynb')], 'notebooks packed into the wheel'


def test_no_dev_tools(wheel_env):
    "The runtime dependencies pull in neither nbdev nor jupyter."
    found = wheel_env['report']['dev_tools']
    assert not found, (f"the wheel's dependencies install dev tools {found}: move whatever pulls them in "
                       'to the dev extra')


def test_import_every_module(wheel_env):
    "`import vit_nb` and each of its modules work from the venv's site-packages (not the checkout)."
    rep = wheel_env['report']
    assert 'site-packages' in rep['file'], f'{PKG} was imported from {rep["file"]}, not from the installed wheel'
    assert not rep['bad'], ('modules that fail to import from the installed wheel (a name defined only in an unexported '
                            'cell, or a dev-only package imported at module level?):\n'
                            + '\n'.join(f'{k}: {v}' for k, v in rep['bad'].items()))


def test_preset_forward(wheel_env):
    "A preset ViT and a hybrid built from the installed package run forward."
    rep = wheel_env['report']
    assert 'forward_error' not in rep, rep.get('forward_error')
    assert (rep['vit'], rep['hybrid']) == ([2, 10], [2, 10])


def _scripts():
    return tomllib.loads((ROOT / 'pyproject.toml').read_text()).get('project', {}).get('scripts', {})


@pytest.mark.parametrize('name', sorted(_scripts()) or [None])
def test_console_script_help(wheel_env, name):
    "Each console script of [project.scripts] is installed and answers `--help`."
    if name is None: pytest.skip('pyproject.toml declares no [project.scripts] yet')
    bindir = wheel_env['bin']
    exe = bindir / name
    assert exe.exists(), f'console script {name} ({_scripts()[name]}) was not installed in {bindir}'
    r = _run([exe, '--help'], f'{name} --help', 300, env=_clean_env(), cwd=bindir)
    assert r.stdout.strip() or r.stderr.strip(), f'{name} --help printed nothing'


def test_report_timings(wheel_env):
    "Not a check: print how long each phase took (see with `pytest -s` or in the junit output)."
    total = sum(TIMINGS.values())
    print('\nwheel test timings: ' + ', '.join(f'{k} {v:.1f}s' for k, v in TIMINGS.items()) + f'; total {total:.1f}s')
