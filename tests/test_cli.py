"""Integration tests of the console scripts vit-nb-train/-finetune/-evaluate/-predict, run as real processes.

Small budgets: scikit-learn's digits, a micro ViT, one CPU thread per process."""
import json, os, signal, subprocess, sys
from pathlib import Path
import pytest
import torch

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
TINY = ['--data', 'digits', '--arch', 'vit_micro_patch2_8', '--bs', '64', '--lr', '3e-3', '--threads', '1']
SMALL = ['--epochs', '3', '--subset', '640', '--no-bar', '--aug']   # augmented: resume must restore its random state too


def run(cmd, *args, timeout=600, **kw):
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout, **kw)


@pytest.mark.parametrize('cmd', ['train', 'finetune', 'evaluate', 'predict'])
def test_help(cmd):
    r = run(cmd, '--help')
    assert r.returncode == 0, r.stderr
    assert f'usage: vit-nb-{cmd}' in r.stdout


@pytest.mark.parametrize('args,msg', [
    (['--epochs', 'three'], "invalid int value: 'three'"),
    (['--no-such-option'], 'unrecognized arguments'),
    (['--epochs', '0'], '--epochs must be at least 1'),
    (['--lr', '-1'], '--lr must be a positive number'),
    (['--arch', 'vit_huge_patch99'], 'is not a preset'),
    (['--data', '/nonexistent/images'], "is neither 'fashion_mnist', 'digits' nor an existing folder"),
    (['--data-path', '/nonexistent/fmnist'], "--data-path '/nonexistent/fmnist' is not a folder"),
    (['--resume', '/nonexistent/run'], 'does not exist'),
])
def test_bad_train_args(tmp_path, args, msg):
    r = run('train', *args, '--out', tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'usage: vit-nb-train' in r.stderr and msg in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())                      # nothing started, no run folder


def test_bad_other_args(tmp_path):
    for cmd, args, msg in [('finetune', [], 'the weights to fine-tune are required'),
                           ('evaluate', [tmp_path/'missing'], 'does not exist'),
                           ('predict', [tmp_path/'missing.safetensors', 'x.png'], 'does not exist'),
                           ('finetune', [tmp_path/'nope.safetensors', '--epochs', '1'], 'does not exist')]:
        r = run(cmd, *args)
        assert r.returncode == 2 and msg in r.stderr, (cmd, r.returncode, r.stderr)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "An uninterrupted reference run (also the weights for evaluate/predict/finetune)."
    out = tmp_path_factory.mktemp('runs')
    r = run('train', *TINY, *SMALL, '--out', out, '--name', 'run')
    assert r.returncode == 0, r.stderr
    return out/'run', r


def test_train_outputs(trained):
    run_dir, r = trained
    assert 'test accuracy:' in r.stdout and 'epoch 3/3:' in r.stdout
    assert {p.name for p in run_dir.iterdir()} >= {'model.safetensors', 'metrics.json', 'config.json',
                                                   'training_curve.png', 'confusion_matrix.png', 'checkpoint.pt'}
    m = json.loads((run_dir/'metrics.json').read_text())
    assert len(m['epochs']) == 3 and m['n_test'] == 359 and m['n_train'] == 640 and 0 <= m['test_accuracy'] <= 1
    assert (run_dir/'training_curve.png').read_bytes()[:4] == b'\x89PNG'
    assert json.loads((run_dir/'config.json').read_text())['args']['aug'] == 'recipe'
    # a second run never reuses a folder
    r2 = run('train', *TINY, '--epochs', '1', '--out', run_dir.parent, '--name', 'run')
    assert r2.returncode == 2 and 'exists already' in r2.stderr


def test_evaluate_predict_finetune(trained, tmp_path):
    run_dir, _ = trained
    acc = json.loads((run_dir/'metrics.json').read_text())['test_accuracy']
    r = run('evaluate', run_dir, '--data', 'digits', '--json-out', tmp_path/'ev.json', '--threads', '1')
    assert r.returncode == 0, r.stderr
    assert abs(json.loads((tmp_path/'ev.json').read_text())['accuracy'] - acc) < 1e-6
    from PIL import Image
    from vit_nb.data import digits
    Image.fromarray(digits().x_valid[0, 0].numpy()).save(tmp_path/'d.png')
    r = run('predict', run_dir, tmp_path/'d.png', '--topk', '2')
    assert r.returncode == 0 and 'd.png:' in r.stdout, r.stderr
    r = run('finetune', run_dir, '--data', 'digits', '--size', '16', '--epochs', '1', '--bs', '64', '--subset', '320',
            '--threads', '1', '--no-bar', '--out', tmp_path, '--name', 'ft')
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path/'ft'/'config.json').read_text())['model']
    assert cfg['img_size'] == [16, 16]



def test_hybrid_train_finetune_evaluate(tmp_path):
    "A hybrid preset (§3.1) from the command line: its weights reload as a hybrid, at the training and a higher resolution."
    r = run('train', '--data', 'digits', '--arch', 'vit_mini_resnet18_s4_28', '--depth', '1', '--epochs', '1', '--bs', '64',
            '--subset', '320', '--threads', '1', '--no-bar', '--out', tmp_path, '--name', 'h')
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path/'h'/'config.json').read_text())['model']
    assert cfg['backbone']['arch'] == 'resnet18' and cfg['patch_size'] == 4 and cfg['depth'] == 1
    acc = json.loads((tmp_path/'h'/'metrics.json').read_text())['test_accuracy']
    r = run('evaluate', tmp_path/'h', '--data', 'digits', '--json-out', tmp_path/'ev.json', '--threads', '1')
    assert r.returncode == 0, r.stderr
    assert abs(json.loads((tmp_path/'ev.json').read_text())['accuracy'] - acc) < 1e-6
    r = run('finetune', tmp_path/'h', '--data', 'digits', '--size', '16', '--epochs', '1', '--subset', '320',
            '--threads', '1', '--no-bar', '--out', tmp_path, '--name', 'hf')
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path/'hf'/'config.json').read_text())['model']
    assert cfg['img_size'] == [16, 16] and cfg['backbone']['arch'] == 'resnet18'
    r = run('train', '--data', 'digits', '--arch', 'vit_mini_resnet18_s4_28', '--patch-size', '2', '--out', tmp_path/'x')
    assert r.returncode == 2 and "a hybrid's patch size is its backbone's stride" in r.stderr, r.stderr

def test_sigint_then_resume(trained, tmp_path, interrupt):
    "SIGINT after the first epoch's checkpoint: exit 130 with the resume command; resuming ends exactly like the reference."
    code, err = interrupt('train', [*TINY, *SMALL], tmp_path/'int', env=ENV)
    assert code == 130, (code, err)
    assert f'Resume with:  vit-nb-train --resume {tmp_path/"int"}' in err, err
    st = torch.load(tmp_path/'int'/'checkpoint.pt', weights_only=True)
    assert (st['epoch'], st['iter']) != (3, 0) and 1 <= st['epoch'] <= 2
    assert not (tmp_path/'int'/'metrics.json').exists()
    r = run('train', '--resume', tmp_path/'int')
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((d/'metrics.json').read_text()) for d in (trained[0], tmp_path/'int'))
    same = lambda es: [{k: v for k, v in e.items() if k != 'seconds'} for e in es]   # wall-clock time differs, the rest must not
    assert same(a['epochs']) == same(b['epochs']) and a['test_accuracy'] == b['test_accuracy']


def test_sigterm_message(tmp_path, interrupt):
    code, err = interrupt('train', [*TINY, *SMALL], tmp_path/'term', signal.SIGTERM, env=ENV)
    assert code == 128 + signal.SIGTERM, (code, err)
    assert 'Interrupted by SIGTERM' in err and f'Resume with:  vit-nb-train --resume {tmp_path/"term"}' in err, err
    assert torch.load(tmp_path/'term'/'checkpoint.pt', weights_only=True)['version'] == 1


def test_nan_stops_and_keeps_checkpoint(tmp_path):
    "An absurd learning rate: the run stops as soon as the loss, the gradients or the weights are non-finite (whichever comes first), the last good checkpoint kept and finite."
    r = run('train', '--data', 'digits', '--arch', 'vit_micro_patch2_8', '--bs', '64', '--lr', '1e30', '--threads', '1',
            '--epochs', '2', '--every', '1', '--out', tmp_path, '--name', 'nan', '--no-bar')
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert any(w in r.stderr for w in ('the training loss is', 'the gradients are not finite', 'the weights or the optimiser state are not finite'))
    assert 'Lower the learning rate' in r.stderr and 'The last good checkpoint is' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    st = torch.load(tmp_path/'nan'/'checkpoint.pt', weights_only=True)
    assert all(torch.isfinite(v).all() for v in st['model'].values())
    assert all(torch.isfinite(t).all() for s in st['opt']['state'] for t in (s.values() if isinstance(s, dict) else [])
               if isinstance(t, torch.Tensor) and t.is_floating_point())
    assert not (tmp_path/'nan'/'model.safetensors').exists()
