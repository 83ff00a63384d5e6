"""vit-nb-predict on a run of vit-nb-segment / vit-nb-detect: it draws the mask or the boxes instead of classifying.

Real processes on a tiny run (Fashion-MNIST canvases, a one-block ViT, one epoch)."""
import os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
TINY = ['--subset', '128', '--n-valid', '64', '--epochs', '1', '--dim', '32', '--depth', '1', '--heads', '2',
        '--mlp-dim', '64', '--threads', '1', '--no-bar']


def run(cmd, *args):
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp('dense')
    for task in ('segment', 'detect'):
        r = run(task, *TINY, '--out', d, '--name', task)
        assert r.returncode == 0, r.stderr
    img = d/'canvas.png'
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(img)
    return d, img


@pytest.mark.parametrize('task', ['segment', 'detect'])
def test_predict_draws(runs, tmp_path, task):
    d, img = runs
    r = run('predict', d/task, img, '--out', tmp_path)
    assert r.returncode == 0, r.stderr
    png = tmp_path/f'canvas_{task}.png'
    assert f'drawn in {png}' in r.stdout, r.stdout
    with Image.open(png) as im: assert im.format == 'PNG' and min(im.size) > 64
    from vit_nb.dense import predict_dense                        # the same prediction, in this process
    res = predict_dense(d/task, img, tmp_path/'again.png')
    if task == 'segment':
        assert ', '.join(f"{k} {v:.1%}" for k, v in res['classes'].items()) in r.stdout
    assert abs(sum(res.get('classes', {'x': 1.}).values()) - 1) < 1e-3


@pytest.mark.parametrize('extra,msg', [(['--tta'], '--tta is for classifiers'), (['--out', '/nonexistent/dir'], 'is not a folder')])
def test_predict_dense_refusals(runs, extra, msg):
    d, img = runs
    r = run('predict', d/'segment', img, *extra)
    assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_dense_run_is_not_an_ensemble_member(runs):
    d, img = runs
    r = run('predict', d/'segment', d/'detect', img)
    assert r.returncode == 2 and 'predicts alone' in r.stderr, r.stderr
