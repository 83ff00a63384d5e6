"""Integration tests of `vit-nb-export`, run as a real process: ONNX (checked here again with ONNX Runtime) and torch.export
(reloaded with `torch.export.load`) against the logits of `vit_nb.factory.load_model`, and every user mistake (exit 2,
the problem named, no traceback, nothing left on disk), missing ONNX packages and a full disk.

One tiny trained run (digits, `vit_micro_patch2_8` with 4x4 patches, one epoch) and the v0.0.1 run fixture are exported."""
import os, resource, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
OLD_RUN = Path(__file__).parent/'fixtures'/'v0.0.1'/'vit_run'
ATOL = 1e-4


def run(cmd, *args, env=None, fsize=None, timeout=300):
    "Run `vit-nb-<cmd>` as a user would; `fsize` caps the size of any file it writes (as `ulimit -f`)."
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout, preexec_fn=limit)


def export(*args, **kw): return run('export', *args, '--threads', '1', **kw)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A run folder of vit-nb-train (a micro ViT on the digits, one epoch)."
    out = tmp_path_factory.mktemp('runs')
    r = run('train', '--data', 'digits', '--arch', 'vit_micro_patch2_8', '--patch-size', '4', '--epochs', '1', '--bs', '64',
            '--threads', '1', '--no-bar', '--out', out, '--name', 'run')
    assert r.returncode == 0, r.stderr
    return out/'run'


def digit_batch(n:int, meta:dict) -> torch.Tensor:
    "The first `n` validation digits, prepared as the exported file's metadata says."
    from vit_nb.data import digits
    mean, std = (torch.tensor(meta[k]).view(1, -1, 1, 1) for k in ('mean', 'std'))
    return (digits().x_valid[:n].float() / 255 - mean) / std


def pytorch_logits(run_dir, x, **kw):
    from vit_nb.factory import load_model
    model, _ = load_model(run_dir, **kw)
    with torch.no_grad(): return model(x)


def ort_run(path, x):
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]), s


def only(folder:Path, name:str):
    "The export wrote `name` and nothing else (no temporary left)."
    assert sorted(p.name for p in folder.iterdir()) == [name]


def test_help():
    r = run('export', '--help')
    assert r.returncode == 0 and 'usage: vit-nb-export' in r.stdout and '--format' in r.stdout, r.stderr


@pytest.mark.parametrize('src', ['trained', 'old'])
def test_onnx_matches_pytorch(src, trained, tmp_path):
    "ONNX Runtime's logits are load_model's at batch 1 and 5; the metadata holds the class names and the normalisation."
    from vit_nb.export import read_export_metadata
    from vit_nb.factory import load_model
    run_dir = trained if src == 'trained' else OLD_RUN
    r = export(run_dir, '--out', tmp_path/'model.onnx')
    assert r.returncode == 0, r.stderr
    assert 'checked with ONNX Runtime against PyTorch' in r.stdout and r.stderr == '', (r.stdout, r.stderr)
    only(tmp_path, 'model.onnx')
    meta, (model, info) = read_export_metadata(tmp_path/'model.onnx'), load_model(run_dir)
    assert (meta['vocab'], meta['mean'], meta['std']) == (info['vocab'], info['mean'], info['std'])
    assert meta['config']['dim'] == model.cfg.dim and meta['img_size'] == [8, 8] and meta['output'] == 'logits'
    for n in (1, 5):
        x = digit_batch(n, meta)
        got, sess = ort_run(tmp_path/'model.onnx', x)
        want = pytorch_logits(run_dir, x)
        assert got.shape == want.shape == (n, 10)
        assert (got - want).abs().max().item() <= ATOL
    assert sess.get_inputs()[0].shape == ['batch', 1, 8, 8]


def test_torch_export_reloads(trained, tmp_path):
    from vit_nb.export import read_export_metadata
    r = export(trained, '--out', tmp_path/'model.pt2', '--format', 'torch-export')
    assert r.returncode == 0, r.stderr
    assert 'checked with torch.export.load against PyTorch' in r.stdout
    only(tmp_path, 'model.pt2')
    meta = read_export_metadata(tmp_path/'model.pt2')
    prog = torch.export.load(tmp_path/'model.pt2').module()
    for n in (1, 5):
        x = digit_batch(n, meta)
        with torch.no_grad(): assert (prog(x) - pytorch_logits(trained, x)).abs().max().item() <= ATOL


def test_other_size_fixed_batch_and_features(trained, tmp_path):
    "--size resamples the positions before export (oracle: load_model at that size); --fixed-batch; --output features."
    r = export(trained, '--out', tmp_path/'s16.onnx', '--size', '16')
    assert r.returncode == 0, r.stderr
    x16 = torch.randn(3, 1, 16, 16)
    got, sess = ort_run(tmp_path/'s16.onnx', x16)
    assert (got - pytorch_logits(trained, x16, img_size=16)).abs().max().item() <= ATOL
    with pytest.raises(Exception, match='dimension|dimensions'):       # a graph of one resolution refuses others
        sess.run(None, {'images': np.zeros((1, 1, 8, 8), np.float32)})
    r = export(trained, '--out', tmp_path/'b3.onnx', '--fixed-batch', '3', '--output', 'features')
    assert r.returncode == 0, r.stderr
    from vit_nb.factory import load_model
    model, _ = load_model(trained)
    x = torch.randn(3, 1, 8, 8)
    got, sess = ort_run(tmp_path/'b3.onnx', x)
    assert sess.get_inputs()[0].shape == [3, 1, 8, 8]
    with torch.no_grad(): want = model.forward_head(model.forward_features(x), pre_logits=True)
    assert got.shape == (3, model.cfg.dim) and (got - want).abs().max().item() <= ATOL


@pytest.fixture(scope='module')
def damaged(tmp_path_factory):
    d = tmp_path_factory.mktemp('damaged')
    (d/'random.safetensors').write_bytes(bytes(range(256)) * 8)
    return d/'random.safetensors'


@pytest.mark.parametrize('args,msg', [
    (['{run}', '--out', '{out}/m.onnx', '--format', 'tflite'], "unknown export format 'tflite': choose 'onnx' or 'torch-export'"),
    (['{run}', '--out', '{out}'], "is a folder: name the file to write"),
    (['{run}', '--out', '{out}/missing/m.onnx'], "does not exist: create it first"),
    (['{run}', '--out', '{out}/m.pt2'], "name it *.onnx, or choose format 'torch-export'"),
    (['{run}', '--out', '{out}/m.onnx', '--output', 'attention'], "attention weights are not exported"),
    (['{run}', '--out', '{out}/m.onnx', '--dynamic-size'], "a dynamic image size is not possible for this model"),
    (['{run}', '--out', '{out}/m.onnx', '--size', '10'], "image size 10x10 is not divisible by the patch size 4x4"),
    (['{run}', '--out', '{out}/m.onnx', '--size', 'big'], "--size must be a resolution in pixels"),
    (['{run}', '--out', '{out}/m.onnx', '--fixed-batch', '0'], "--fixed-batch must be at least 1"),
    (['{run}', '--out', '{out}/m.onnx', '--opset', '11'], "cannot write this model in opset 11"),
    (['{run}', '--out', '{out}/m.onnx', '--atol', '0'], "--atol must be a positive tolerance"),
    (['{run}'], "--out is required"),
    (['{out}/nowhere', '--out', '{out}/m.onnx'], "does not exist"),
    (['{damaged}', '--out', '{out}/m.onnx'], "cannot load a model from"),
])
def test_mistakes(args, msg, trained, damaged, tmp_path):
    "Each mistake: exit 2, the message names it, no traceback, and the output folder stays empty."
    out = tmp_path/'out'; out.mkdir()
    r = export(*[a.format(run=trained, out=out, damaged=damaged) for a in args])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'usage: vit-nb-export' in r.stderr and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert list(out.iterdir()) == []


def test_missing_onnx_packages(trained, tmp_path):
    "Without onnx/onnxscript/onnxruntime: ONNX export says how to install them; torch-export still works."
    shim = tmp_path/'shim'
    for name in ('onnx', 'onnxscript', 'onnxruntime'):
        (shim/name).mkdir(parents=True)
        (shim/name/'__init__.py').write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')\n")
    env = {**ENV, 'PYTHONPATH': str(shim)}
    out = tmp_path/'out'; out.mkdir()
    r = export(trained, '--out', out/'m.onnx', env=env)
    assert r.returncode == 2 and "pip install 'vit_nb[export]'" in r.stderr and 'missing: onnx, onnxscript, onnxruntime' in r.stderr, r.stderr
    assert list(out.iterdir()) == []
    r = export(trained, '--out', out/'m.pt2', '--format', 'torch-export', env=env)
    assert r.returncode == 0, r.stderr
    only(out, 'm.pt2')


def test_full_disk_leaves_nothing(trained, tmp_path):
    "`ulimit -f`: the write fails with 'the disk is full', exit 1; the file it was to replace is intact, no temporary."
    (tmp_path/'m.onnx').write_bytes(b'an older export')
    r = export(trained, '--out', tmp_path/'m.onnx', fsize=20_000)
    assert r.returncode == 1 and 'the disk is full' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert (tmp_path/'m.onnx').read_bytes() == b'an older export'
    only(tmp_path, 'm.onnx')
