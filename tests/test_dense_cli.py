"""Integration tests of the console scripts vit-nb-segment and vit-nb-detect, run as real processes, and of `predict_dense`.

Small budgets: a few hundred 64x64 canvases of real Fashion-MNIST items, one-block ViTs, one CPU thread per process."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
BASE = ['--subset', '192', '--n-valid', '48', '--bs', '32', '--threads', '1', '--no-bar']
TINY = BASE + ['--depth', '1']


def run(cmd, *args, timeout=600, **kw):
    exe = BIN/f'vit-nb-{cmd}'
    assert exe.exists(), f"{exe} is not installed: run `pip install -e . --no-deps` (scripts/setup)"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


def py(code, timeout=300):
    "Run Python code in a fresh process of this environment."
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A finished tiny segmentation run and a finished tiny detection run (2 epochs each), and the folder holding them."
    root = tmp_path_factory.mktemp('dense')
    for task in ('segment', 'detect'):
        r = run(task, *TINY, '--epochs', '2', '--out', root, '--name', task)
        assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope='module')
def backbone(tmp_path_factory):
    "A Fashion-MNIST-shaped classifier saved as vit-nb-train saves one: 32x32 grey images, 8x8 patches, one block, its own stats."
    root = tmp_path_factory.mktemp('backbone')
    code = f"""
import torch
from vit_nb.factory import create_model, save_model
torch.manual_seed(0)
m = create_model('vit_mini_patch4_28', img_size=32, patch_size=8, depth=1)
torch.nn.init.normal_(m.head.weight)
save_model(m, {str(root/'cls'/'model.safetensors')!r}, vocab=[str(i) for i in range(10)], stats=[[0.2860], [0.3530]], command='train')
save_model(create_model('vit_mini_patch7_28', depth=1), {str(root/'p7'/'model.safetensors')!r})
save_model(create_model('resnet_small_s2_28'), {str(root/'resnet'/'model.safetensors')!r})
"""
    r = py(code)
    assert r.returncode == 0, r.stderr
    return root


@pytest.mark.parametrize('cmd', ['segment', 'detect'])
def test_help(cmd):
    r = run(cmd, '--help')
    assert r.returncode == 0
    for opt in ('--epochs', '--bs', '--lr', '--arch', '--backbone', '--size', '--subset', '--out', '--name', '--resume',
                '--seed', '--threads', '--no-bar'):
        assert opt in r.stdout, opt


BAD = [
    (['--epochs', '0'], '--epochs must be at least 1'),
    (['--lr', '-1'], '--lr must be a positive number'),
    (['--size', '8'], '--size must be at least 16'),
    (['--size', '60'], '--size 60 is not a multiple of the patch size 8: use e.g. --size 64'),
    (['--max-items', '0'], '--max-items must be 1 to 16'),
    (['--arch', 'vit_mini_patch4_29'], "--arch 'vit_mini_patch4_29' is not a preset"),
    (['--arch', 'vit_mini_resnet18_s4_28'], 'is a hybrid model'),
    (['--depth', '0'], '--depth must be positive'),
    (['--backbone', '/nonexistent/run'], "--backbone '/nonexistent/run' does not exist"),
    (['--resume', '/nonexistent/run'], 'does not exist'),
    (['--data-path', '/nonexistent/fmnist'], "--data-path '/nonexistent/fmnist' is not a folder"),
]
@pytest.mark.parametrize('cmd, args, msg', [('segment', *c) for c in BAD] + [('detect', *c) for c in BAD[:2]])
def test_bad_args(tmp_path, cmd, args, msg):
    "Each mistake exits with status 2 and says what was wrong, before any run folder is made."
    r = run(cmd, *args, '--out', tmp_path/'out')
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'out').exists()


def test_bad_data_and_names(runs, tmp_path, backbone):
    "A folder without Fashion-MNIST, an existing run name, a backbone with architecture options or of the wrong kind: status 2."
    (tmp_path/'empty').mkdir()
    r = run('segment', '--data-path', tmp_path/'empty', '--out', tmp_path/'out')
    assert r.returncode == 2 and 'Fashion-MNIST' in r.stderr and 'does not hold the Fashion-MNIST files' in r.stderr, r.stderr
    r = run('segment', *TINY, '--out', runs, '--name', 'segment')
    assert r.returncode == 2 and 'exists already' in r.stderr, r.stderr
    r = run('detect', '--backbone', backbone/'cls', '--depth', '2', '--out', tmp_path/'out')
    assert r.returncode == 2 and 'gives the architecture; drop --depth' in r.stderr, r.stderr
    r = run('detect', '--backbone', backbone/'p7', '--out', tmp_path/'out')
    assert r.returncode == 2 and "--size 64 is not a multiple of the backbone's patch size 7" in r.stderr, r.stderr
    r = run('detect', '--backbone', backbone/'resnet', '--out', tmp_path/'out')
    assert r.returncode == 2 and 'holds a resnet model' in r.stderr, r.stderr
    assert not (tmp_path/'out').exists()


@pytest.mark.parametrize('task, key', [('segment', 'test_miou'), ('detect', 'test_map50')])
def test_outputs(runs, task, key):
    "The run folder's files; the saved model, reloaded, gives the reported test figure on the regenerated test canvases."
    d = runs/task
    assert sorted(p.name for p in d.iterdir()) == ['checkpoint.pt', 'config.json', 'metrics.json', 'model.safetensors', 'predictions.png']
    assert not list(d.glob('.*.tmp'))
    m = json.loads((d/'metrics.json').read_text())
    assert m['task'] == task and m['n_train'] == 192 and m['n_test'] == 48 and len(m['epochs']) == 2
    assert 0 <= m[key] <= 1 and m['train_seconds'] > 0
    per_class = m['test_iou'] if task == 'segment' else m['test_ap']
    assert set(per_class) <= {'background', 'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'}
    cfg = json.loads((d/'config.json').read_text())
    assert cfg['family'] == 'dense' and cfg['task'] == task and cfg['model']['backbone']['depth'] == 1
    im = Image.open(d/'predictions.png')
    assert im.format == 'PNG' and im.width > 300 and np.asarray(im.convert('L')).std() > 10
    r = py(f"""
from vit_nb.dense import dense_task, dense_data, dense_dls, evaluate_dense
from vit_nb.factory import load_model
model, info = load_model({str(d)!r})
assert dense_task({str(d)!r}) == {task!r} and model.task == {task!r}
data = dense_data(n_train=8, n_valid=48)
dls = dense_dls(data, {task!r}, bs=32, stats=(info['mean'], info['std']))
res = evaluate_dense(model, dls.valid)
print(res[{'miou' if task == 'segment' else 'map50'!r}])
""")
    assert r.returncode == 0, r.stderr
    assert abs(float(r.stdout.strip()) - m[key]) < 1e-9


def test_from_backbone(backbone, tmp_path):
    "Weights of a classifier at 32x32 become the backbone at 64x64: positions resampled, the classifier's normalisation kept."
    r = run('segment', *BASE, '--epochs', '1', '--backbone', backbone/'cls',
            '--out', tmp_path, '--name', 'bb')
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path/'bb'/'config.json').read_text())
    assert cfg['model']['backbone']['img_size'] == 64 and cfg['model']['backbone']['patch_size'] == 8
    assert cfg['args']['stats'] == [[0.286], [0.353]]
    r = py(f"""
import torch
import vit_nb.dense                                     # registers the model family 'dense' with the factory
from vit_nb.factory import load_model
m, info = load_model({str(tmp_path/'bb')!r})
assert (info['mean'], info['std']) == ([0.286], [0.353]), info
assert m.backbone.pos_embed.shape == (1, 1 + 64, 128), m.backbone.pos_embed.shape
""")
    assert r.returncode == 0, r.stderr


def test_sigint_then_resume_is_exact(tmp_path, interrupt):
    "SIGINT after the first checkpoint: exit 130 with the resume command; the resumed run ends exactly like an uninterrupted one."
    r = run('detect', *TINY, '--epochs', '3', '--out', tmp_path, '--name', 'ref')
    assert r.returncode == 0, r.stderr
    code, err = interrupt('detect', [*TINY, '--epochs', '3'], tmp_path/'int', env=ENV)
    assert code == 130, (code, err)
    assert f'Resume with:  vit-nb-detect --resume {tmp_path/"int"}' in err, err
    assert not (tmp_path/'int'/'metrics.json').exists()
    r = run('detect', '--resume', tmp_path/'int')
    assert r.returncode == 0, r.stderr
    assert 'resuming' in r.stdout
    a, b = (json.loads((tmp_path/d/'metrics.json').read_text()) for d in ('ref', 'int'))
    same = lambda es: [{k: v for k, v in e.items() if k != 'seconds'} for e in es]
    assert same(a['epochs']) == same(b['epochs']) and a['test_map50'] == b['test_map50']
    assert a['test_ap'] == b['test_ap']


def test_resume_mistakes(runs):
    "A finished run has nothing to resume; a checkpoint of the other command is refused."
    r = run('segment', '--resume', runs/'segment')
    assert r.returncode == 2 and 'is a finished run' in r.stderr, r.stderr
    r = run('detect', '--resume', runs/'segment')
    assert r.returncode == 2 and 'is a checkpoint of vit-nb-segment, not vit-nb-detect' in r.stderr, r.stderr


def test_missing_outputs_are_rewritten(runs, tmp_path):
    "A run whose outputs were lost after training (e.g. a full disk) writes them again on --resume, without training."
    import shutil
    d = tmp_path/'seg'
    shutil.copytree(runs/'segment', d)
    want = json.loads((d/'metrics.json').read_text())
    for f in ('metrics.json', 'model.safetensors', 'predictions.png'): (d/f).unlink()
    r = run('segment', '--resume', d)
    assert r.returncode == 0, r.stderr
    assert 'trained before' in r.stdout
    got = json.loads((d/'metrics.json').read_text())
    assert got['test_miou'] == want['test_miou'] and got['epochs'][-1]['miou'] == want['epochs'][-1]['miou']


def test_nan_stops(tmp_path):
    "An absurd learning rate stops the run with status 3, the advice, and no traceback."
    r = run('segment', *TINY, '--epochs', '2', '--lr', '1e30', '--every', '1', '--out', tmp_path, '--name', 'nan')
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert 'Lower the learning rate' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_predict_dense(runs, backbone, tmp_path):
    "predict_dense draws a user's image (another size, RGB) with each model and returns what it drew; mistakes are clear ValueErrors."
    rng = np.random.default_rng(0)
    img = np.zeros((96, 96, 3), np.uint8); img[20:60, 30:70] = rng.integers(100, 255, (40, 40, 3))
    Image.fromarray(img).save(tmp_path/'photo.png')
    r = py(f"""
from pathlib import Path
from fastcore.test import test_fail
from vit_nb.dense import predict_dense
t = Path({str(tmp_path)!r})
r = predict_dense({str(runs/'segment')!r}, t/'photo.png', t/'seg.png')
assert r['task'] == 'segment' and abs(sum(r['classes'].values()) - 1) < 1e-3, r
r = predict_dense({str(runs/'detect')!r}, t/'photo.png', t/'det.png', score_thresh=0.)
assert r['task'] == 'detect' and r['detections'] and all(len(b) == 4 for _, _, b in r['detections']), r
test_fail(lambda: predict_dense({str(backbone/'cls')!r}, t/'photo.png', t/'x.png'), contains='holds a classifier')
test_fail(lambda: predict_dense({str(runs/'segment')!r}, t/'photo.png', t/'x.jpg'), contains='name the output *.png')
test_fail(lambda: predict_dense({str(runs/'segment')!r}, t/'photo.png', t/'no'/'x.png'), contains='does not exist')
(t/'bad.png').write_bytes(b'not an image')
test_fail(lambda: predict_dense({str(runs/'segment')!r}, t/'bad.png', t/'x.png'), contains='cannot read the image')
""")
    assert r.returncode == 0, r.stderr
    for f in ('seg.png', 'det.png'):
        im = Image.open(tmp_path/f)
        assert im.format == 'PNG' and np.asarray(im.convert('L')).std() > 10
    assert not (tmp_path/'x.png').exists()
