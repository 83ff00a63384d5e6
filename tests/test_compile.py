"""`torch.compile` in training: `vit_learner(compile=True)` and `--compile` on the real console scripts.

A micro ViT on the digits, a few steps, one CPU thread. Inductor's first compilation of each graph costs tens of seconds;
its on-disk cache (`/tmp/torchinductor_<user>`) makes the later ones take seconds, so the runs share their graphs.

Measured here (torch 2.14.1, CPU, g++ 12): a compiled run interrupted and resumed (recompiled in a new process) ends
with exactly the weights of the uninterrupted compiled run, so the test asks for equality; on the same batch the compiled
model's loss equals the eager one and its logits differ by at most 4.8e-7 (values up to 1.5), its gradients by 4.1e-8
(values up to 0.14): the tolerances below are about ten times that."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
import torch

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
RUN = ['--data', 'digits', '--arch', 'vit_micro_patch2_8', '--patch-size', '4', '--bs', '64', '--lr', '3e-3', '--threads', '1',
       '--epochs', '2', '--subset', '320', '--every', '2', '--no-bar', '--aug']


def run(cmd, *args, env=ENV, timeout=900):
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def interrupted(interrupt, run, *extra):
    "A run like the reference, sent SIGINT as soon as its first checkpoint exists; its folder."
    code, err = interrupt('train', [*RUN, *extra], run, env=ENV, timeout=600)
    assert code == 130, (code, err[-3000:])
    return run


def weights(d):
    from safetensors.torch import load_file
    return load_file(str(d/'model.safetensors'))


def ckpt_keys(d): return set(torch.load(d/'checkpoint.pt', weights_only=True)['model'])


@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    "The uninterrupted compiled run."
    out = tmp_path_factory.mktemp('runs')
    r = run('train', *RUN, '--compile', '--out', out, '--name', 'ref')
    assert r.returncode == 0, r.stderr[-3000:]
    return out/'ref'


def test_compiled_resume_is_exact(ref, tmp_path, interrupt):
    "Compiled, interrupted, resumed compiled: the reference's weights exactly; resumed eagerly instead: it finishes too."
    d = interrupted(interrupt, tmp_path/'int', '--compile')
    keys = ckpt_keys(d)
    assert not any('_orig_mod' in k for k in keys) and keys == set(weights(ref))
    shutil.copytree(d, tmp_path/'eager')                                 # the same checkpoint, to resume without compiling
    r = run('train', '--resume', d, '--compile')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = weights(ref), weights(d)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((x/'metrics.json').read_text()) for x in (ref, d))
    assert [e['train_loss'] for e in ma['epochs']] == [e['train_loss'] for e in mb['epochs']]
    assert abs(ma['test_accuracy'] - mb['test_accuracy']) < 1e-9
    r = run('train', '--resume', tmp_path/'eager')                       # no --compile: eager from here on
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path/'eager'/'config.json').read_text())['args']['compile'] is False
    c = weights(tmp_path/'eager')
    assert c.keys() == a.keys() and max((a[k] - c[k]).abs().max().item() for k in a) < 0.1   # rounding, amplified by Adam


def test_saved_weights_load(ref):
    "The weights of a compiled run carry no `_orig_mod.` prefix and load with `load_model`; evaluate gives the run's accuracy."
    assert not any(k.startswith('_orig_mod') for k in weights(ref))
    from vit_nb.factory import load_model
    from vit_nb.model import ViT
    model, info = load_model(ref)
    assert type(model) is ViT and model.cfg.patch_size == 4 and info['vocab'] == [str(i) for i in range(10)]
    r = run('evaluate', ref, '--data', 'digits', '--threads', '1')
    acc = json.loads((ref/'metrics.json').read_text())['test_accuracy']
    assert r.returncode == 0 and f"accuracy {acc:.4f}" in r.stdout, (r.stdout, r.stderr[-2000:])


def test_eager_checkpoint_resumes_compiled(ref, tmp_path, interrupt):
    "An eager run's checkpoint resumes with --compile, and finishes like the eager run would, within rounding."
    d = interrupted(interrupt, tmp_path/'e')
    r = run('train', '--resume', d, '--compile')
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((d/'config.json').read_text())['args']['compile'] is True
    assert ckpt_keys(d) == set(weights(ref))
    a, c = weights(ref), weights(d)
    assert max((a[k] - c[k]).abs().max().item() for k in a) < 0.1       # the compiled reference, within Adam-amplified rounding


def test_no_compiler(tmp_path):
    "Without a C++ compiler (CXX pointing nowhere) --compile is refused at the first batch, naming the option; nothing left."
    r = run('train', *RUN, '--compile', '--out', tmp_path, '--name', 'nocc', env={**ENV, 'CXX': '/nonexistent/g++'})
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    for s in ('vit-nb-train: error: --compile: torch.compile cannot compile the model here', 'InvalidCxxCompiler',
              'install a C++ compiler', 'Drop --compile to train without compiling'):
        assert s in r.stderr, (s, r.stderr[-3000:])
    assert 'Traceback' not in r.stderr
    assert not (tmp_path/'nocc').exists()                                # the empty run folder was removed


def test_learner_same_loss():
    "On the same batch, a compiled learner's loss, logits and gradients are the eager ones within float32 rounding."
    torch.set_num_threads(1)
    from fastai.torch_core import set_seed
    from vit_nb.data import digits, tensor_dls
    from vit_nb.learner import vit_learner
    from vit_nb.factory import unwrap_model
    set_seed(4)
    dls = tensor_dls(digits(), bs=64, aug=False, n_train=320)
    eager = vit_learner(dls, 'vit_micro_patch2_8', config=dict(patch_size=4))
    with eager.no_bar(), eager.no_logging(): eager.fit_pretrain(1, lr=3e-3)    # a trained head: not uniform predictions
    comp = vit_learner(dls, eager.model, compile=True)
    assert unwrap_model(comp.model) is eager.model
    xb, yb = dls.valid.one_batch()
    ps = list(eager.model.parameters())
    le = eager.loss_func(eager.model(xb), yb); ge = torch.autograd.grad(le, ps)
    out = comp.model(xb.as_subclass(torch.Tensor))
    lc = comp.loss_func(out, yb); gc = torch.autograd.grad(lc, ps)
    assert abs(le.item() - lc.item()) <= 1e-6 * abs(le.item())
    assert (out - eager.model(xb)).abs().max().item() < 5e-6
    assert max((a - b).abs().max().item() for a, b in zip(ge, gc)) < 5e-7
