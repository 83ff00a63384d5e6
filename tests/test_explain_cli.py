"""Integration tests of the `vit-nb-explain` console script: real image files, small models saved to a temporary folder.

Each test runs the installed command in a subprocess, as a user would."""
import json, shutil, subprocess, sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vit_nb.model import create_vit

EXE = shutil.which('vit-nb-explain', path=str(Path(sys.executable).parent)) or shutil.which('vit-nb-explain')


def run(*args, cwd=None):
    assert EXE, "the vit-nb-explain console script is not installed: run scripts/setup (pip install -e '.[dev]')"
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A small RGB model saved like vit-nb-train's output folder, the same weights alone, and two real photographs."
    tmp = tmp_path_factory.mktemp('explain')
    torch.manual_seed(0)
    m = create_vit('vit_micro_patch2_8', img_size=32, patch_size=8, in_chans=3, depth=2, heads=3, dim=48, mlp_dim=96)
    torch.nn.init.normal_(m.head.weight)
    run_dir = tmp/'run'; run_dir.mkdir()
    save_file(m.state_dict(), run_dir/'model.safetensors')
    (run_dir/'config.json').write_text(json.dumps({'model': asdict(m.cfg), 'mean': [0.5] * 3, 'std': [0.25] * 3}))
    bare = tmp/'bare.safetensors'; save_file(m.state_dict(), bare)       # no configuration anywhere
    from skimage import data as skdata
    import matplotlib.cbook
    astro = tmp/'astronaut.png'; Image.fromarray(skdata.astronaut()).save(astro)
    grace = tmp/'grace hopper.jpg'                                       # a space in the name, a JPEG
    with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f: grace.write_bytes(f.read())
    bad = tmp/'broken.jpg'; bad.write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    return dict(tmp=tmp, run=run_dir, bare=bare, astro=astro, grace=grace, bad=bad, cfg=m.cfg)


def test_help():
    r = run('--help')
    assert r.returncode == 0 and 'weights' in r.stdout and '--out' in r.stdout and '--layer' in r.stdout


def test_writes_one_png_per_image(files):
    out = files['tmp']/'figs'
    r = run(files['run'], files['astro'], files['grace'], '--out', out, '--layer', '0')
    assert r.returncode == 0, r.stderr
    pngs = sorted(out.iterdir())
    assert [p.name for p in pngs] == ['astronaut_attention.png', 'grace hopper_attention.png']
    assert r.stdout.split('\n')[:2] == [str(out/'astronaut_attention.png'), str(out/'grace hopper_attention.png')]
    for p in pngs:
        im = Image.open(p)
        assert im.format == 'PNG' and im.width > 200 and im.height > 50
        a = np.asarray(im.convert('RGB')).astype(float)
        assert a.std() > 10                                              # a drawn figure, not a blank canvas


def test_grey_model_takes_colour_images_and_preset(files):
    "Weights without a configuration need --preset; a 1-channel model converts an RGB photo to grey."
    tmp = files['tmp']
    m = create_vit('vit_micro_patch2_8')
    save_file(m.state_dict(), tmp/'micro.safetensors')
    r = run(tmp/'micro.safetensors', files['astro'], '--out', tmp/'grey')
    assert r.returncode == 2 and '--preset' in r.stderr and not (tmp/'grey').exists()
    r = run(tmp/'micro.safetensors', files['astro'], '--out', tmp/'grey', '--preset', 'vit_micro_patch2_8')
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp/'grey').iterdir()] == ['astronaut_attention.png']


def test_errors_write_nothing(files):
    "Each run fails with status 2 (a usage error, as every vit-nb command), a message and no traceback, before creating the output folder."
    tmp = files['tmp']
    cases = [((files['run'], files['astro'], tmp/'missing.png'), 'missing.png'),          # a missing image
             ((files['run'], files['astro'], files['bad']), 'cannot read'),              # not an image
             ((tmp/'no_such_run', files['astro']), 'does not exist')]                    # missing weights
    for i, (args, msg) in enumerate(cases):
        out = tmp/f'err{i}'
        r = run(*args, '--out', out)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert msg in r.stderr, (msg, r.stderr)
        assert 'Traceback' not in r.stderr
        assert not out.exists()


def test_bad_arguments_exit_2(files):
    r = run(files['run'], files['astro'], '--layer', 'last')
    assert r.returncode == 2 and 'usage' in r.stderr
    r = run(files['run'], files['astro'], '--layer', '9', '--out', files['tmp']/'l9')
    assert r.returncode == 2 and 'out of range' in r.stderr and not (files['tmp']/'l9').exists()
