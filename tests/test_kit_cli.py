"""The training kit and the ensembles (issue 16) through the real console scripts: MixUp and CutMix together, the data set's
recipe (`--aug`), `--ema` and `--avg-last` (saved, evaluated, resumed exactly), `vit-nb-evaluate` of several runs (an ensemble),
`--tta`, the expected calibration error, the reliability diagram and `--temperature`, and `vit-nb-predict` of an ensemble.

Tiny runs: scikit-learn's digits, the micro ViT with 4x4 patches, 640 training images, one CPU thread per process. The
oracles are computed here from `load_model` and the data, without the command's code path: the model's logits on the
test images for accuracy, loss and ECE, and the mean of the softmax probabilities over the members and views by hand."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
import torch

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
TINY = ['--data', 'digits', '--arch', 'vit_micro_patch2_8', '--patch-size', '4', '--bs', '64', '--lr', '3e-3', '--threads', '1']
KIT = [*TINY, '--epochs', '3', '--subset', '640', '--every', '3', '--no-bar', '--aug', '--mixup', '0.4', '--cutmix', '1',
       '--switch-prob', '0.5', '--ema', '0.8', '--avg-last', '2']


def run(cmd, *args, timeout=600):
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


def weights(f):
    from safetensors.torch import load_file
    return load_file(str(f))


@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    "The uninterrupted kit run: the recipe of digits, MixUp and CutMix together, an EMA and the average of the last two epochs."
    out = tmp_path_factory.mktemp('runs')
    r = run('train', *KIT, '--out', out, '--name', 'ref')
    assert r.returncode == 0, r.stderr[-3000:]
    return out/'ref', r


@pytest.fixture(scope='module')
def oracle(ref):
    "The run's logits and labels on the 359 test images, from `load_model` and the data as training normalised them."
    torch.set_num_threads(1)
    from vit_nb.factory import load_model
    from vit_nb.data import digits, tensor_dls
    model, info = load_model(ref[0])
    dls = tensor_dls(digits(), bs=64, aug=False, stats=(info['mean'], info['std']), device='cpu')
    with torch.no_grad():
        z, y = zip(*[(model(x.as_subclass(torch.Tensor)), t.as_subclass(torch.Tensor)) for x, t in dls.valid])
    return torch.cat(z), torch.cat(y)


def test_kit_run(ref):
    "MixUp and CutMix together train; metrics.json says what model.safetensors holds and gives the EMA's test figures."
    d, r = ref
    kit = json.loads((d/'config.json').read_text())['args']['kit']
    assert kit['mix'] == dict(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5) and kit['recipe'] == 'digits'
    assert kit['aug']['trivial'] is True and kit['label_smoothing'] == 0.1
    m = json.loads((d/'metrics.json').read_text())
    assert m['model_weights'] == 'the average of the weights after epochs 2, 3 (--avg-last 2)'
    assert m['ema_weights'] == 'model_ema.safetensors' and m['ema_decay'] == 0.8
    assert all({'ema_valid_loss', 'ema_accuracy'} <= e.keys() for e in m['epochs'])
    assert abs(m['epochs'][-1]['ema_accuracy'] - m['ema_test_accuracy']) < 1e-6       # the last validation is the test evaluation
    assert f"test accuracy: {m['test_accuracy']:.4f}" in r.stdout and f"test accuracy {m['ema_test_accuracy']:.4f}" in r.stdout
    assert 'model.safetensors holds the average of the weights after epochs 2, 3' in r.stdout


def test_ema_weights_load_and_evaluate(ref, tmp_path):
    "model_ema.safetensors loads with load_model and evaluates to the EMA accuracy the run reported."
    d, _ = ref
    from vit_nb.factory import load_model
    model, info = load_model(d/'model_ema.safetensors')
    assert info['vocab'] == [str(i) for i in range(10)] and model.cfg.patch_size == 4
    raw, ema = weights(d/'model.safetensors'), weights(d/'model_ema.safetensors')
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in raw)
    r = run('evaluate', d/'model_ema.safetensors', '--data', 'digits', '--json-out', tmp_path/'ema.json', '--threads', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((d/'metrics.json').read_text())
    assert abs(json.loads((tmp_path/'ema.json').read_text())['accuracy'] - m['ema_test_accuracy']) < 1e-6


def test_interrupted_kit_run_resumes_exactly(ref, tmp_path, interrupt):
    "SIGINT once the first checkpoint exists, then --resume: the EMA, the averaged weights and the history of the uninterrupted run, exactly."
    code, err = interrupt('train', KIT, tmp_path/'int', env=ENV)
    assert code == 130, (code, err[-3000:])
    ck = tmp_path/'int'/'checkpoint.pt'
    st = torch.load(ck, weights_only=True)
    assert (st['epoch'], st['iter']) != (3, 0) and set(st['callbacks']) == {'ema', 'average_last_epochs'}
    r = run('train', '--resume', tmp_path/'int')
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ('model.safetensors', 'model_ema.safetensors'):
        a, b = weights(ref[0]/f), weights(tmp_path/'int'/f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    a, b = (json.loads((x/'metrics.json').read_text()) for x in (ref[0], tmp_path/'int'))
    same = lambda es: [{k: v for k, v in e.items() if k != 'seconds'} for e in es]
    assert same(a['epochs']) == same(b['epochs'])
    assert (a['test_accuracy'], a['ema_test_accuracy']) == (b['test_accuracy'], b['ema_test_accuracy'])


def test_one_member_and_copy_equal_the_run(ref, oracle, tmp_path):
    "A one-member ensemble is the run's own evaluation; an ensemble of the run and its copy is the run; the ECE printed is the oracle's."
    d, _ = ref
    z, y = oracle
    from vit_nb.ensemble import calibration_error
    acc, loss, ece = (z.argmax(1) == y).float().mean().item(), torch.nn.functional.cross_entropy(z, y).item(), calibration_error(z.softmax(-1), y).ece
    m = json.loads((d/'metrics.json').read_text())
    assert acc == m['test_accuracy'] and abs(loss - m['test_loss']) < 1e-6       # the oracle is the run's own evaluation
    shutil.copytree(d, tmp_path/'copy')
    res = {}
    for name, members in (('one', [d]), ('two', [d, tmp_path/'copy'])):
        r = run('evaluate', *members, '--data', 'digits', '--json-out', tmp_path/f'{name}.json', '--threads', '1')
        assert r.returncode == 0, r.stderr[-3000:]
        res[name] = json.loads((tmp_path/f'{name}.json').read_text())
        assert res[name]['accuracy'] == acc and abs(res[name]['loss'] - loss) < 1e-6 and abs(res[name]['ece'] - ece) < 1e-6, res[name]
        assert f"accuracy {acc:.4f}, loss {loss:.4f}, ECE {ece:.4f} (359 images" in r.stdout, r.stdout
        png = tmp_path/f'{name}_reliability.png'
        assert res[name]['reliability'] == str(png) and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        from PIL import Image
        with Image.open(png) as im: im.verify()
    assert 'an ensemble of 2' in r.stdout and res['two']['weights'] == [str(d/'model.safetensors'), str(tmp_path/'copy'/'model.safetensors')]


def test_members_with_other_classes_are_refused(ref, tmp_path):
    "Runs whose classes differ are no ensemble: exit 2, the message names both and their classes; nothing written."
    from vit_nb.factory import create_model, save_model
    save_model(create_model('vit_micro_patch2_8', patch_size=4), tmp_path/'letters.safetensors', vocab=list('abcdefghij'))
    r = run('evaluate', ref[0], tmp_path/'letters.safetensors', '--data', 'digits', '--out', tmp_path/'ev')
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    for s in ('cannot make an ensemble of', str(ref[0]), 'letters.safetensors', 'predict different classes', "['0', '1', '2'", "['a', 'b', 'c'"):
        assert s in r.stderr, (s, r.stderr)
    assert not (tmp_path/'ev').exists()


def test_tta_and_temperature(ref, oracle, tmp_path):
    "--tta reports its views; --temperature fits T on half the test images and lowers the NLL on the other half; a valid PNG."
    r = run('evaluate', ref[0], '--data', 'digits', '--tta', '--temperature', '--out', tmp_path/'ev', '--json-out', tmp_path/'t.json',
            '--threads', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path/'t.json').read_text())
    from vit_nb.ensemble import tta_augs
    assert res['tta'] == list(tta_augs('digits')) == ['identity', 'shift down 1', 'shift up 1', 'shift right 1', 'shift left 1']
    assert 'TTA over 5 views: identity, shift down 1' in r.stdout
    t = res['temperature']
    assert t['temperature'] > 0 and t['n_fit'] + t['n_held_out'] == res['n'] == 359 and t['n_fit'] == 179
    assert t['nll_after'] <= t['nll_before'] + 1e-9, t
    assert f"temperature {t['temperature']:.4f}, fitted on 179 of the test images" in r.stdout and f"NLL {t['nll_before']:.4f} -> {t['nll_after']:.4f}" in r.stdout
    png = tmp_path/'ev'/'reliability_digits_tta.png'
    from PIL import Image
    with Image.open(png) as im: im.verify()
    with Image.open(png) as im: assert im.format == 'PNG' and im.size[0] > 2 * im.size[1]    # three diagrams side by side
    z, y = oracle                                                                  # TTA by hand: the mean of the views' probabilities
    from vit_nb.factory import load_model
    from vit_nb.data import digits, tensor_dls
    model, info = load_model(ref[0])
    x = torch.cat([b.as_subclass(torch.Tensor) for b, _ in tensor_dls(digits(), bs=64, aug=False, stats=([0.], [1.]), device='cpu').valid])
    mean, std = torch.tensor(info['mean'])[None, :, None, None], torch.tensor(info['std'])[None, :, None, None]
    views = [x] + [torch.nn.functional.pad(x, (1, 1, 1, 1))[..., 1 - dy:9 - dy, 1 - dx:9 - dx] for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    with torch.no_grad(): p = torch.stack([model((v - mean) / std).softmax(-1) for v in views]).mean(0)
    assert abs((p.argmax(1) == y).float().mean().item() - res['accuracy']) < 1e-9
    assert abs(-p[torch.arange(len(y)), y].log().mean().item() - res['loss']) < 1e-5


def test_predict_ensemble_with_tta(ref, tmp_path):
    "vit-nb-predict of two runs with --tta: the digits' views, and the top probability of the mean over members and views, by hand."
    from PIL import Image
    from vit_nb.data import digits, image_batch
    from vit_nb.factory import load_model
    Image.fromarray(digits().x_valid[0, 0].numpy()).save(tmp_path/'d.png')
    shutil.copytree(ref[0], tmp_path/'copy')
    r = run('predict', ref[0], tmp_path/'copy', tmp_path/'d.png', '--tta', '--topk', '1', '--threads', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'test-time augmentation (digits): identity, shift down 1, shift up 1, shift right 1, shift left 1' in r.stdout
    model, info = load_model(ref[0])
    x = image_batch([tmp_path/'d.png'], 8, 1)
    mean, std = torch.tensor(info['mean'])[None, :, None, None], torch.tensor(info['std'])[None, :, None, None]
    views = [x] + [torch.nn.functional.pad(x, (1, 1, 1, 1))[..., 1 - dy:9 - dy, 1 - dx:9 - dx] for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    with torch.no_grad(): p = torch.stack([model((v - mean) / std).softmax(-1) for v in views]).mean(0)[0]
    assert f"d.png: {info['vocab'][p.argmax()]} {p.max():.3f}" in r.stdout, (r.stdout, p)


def test_finetune_with_the_kit(ref, tmp_path):
    "vit-nb-finetune takes the kit too: the recipe (its label smoothing included) and an EMA, saved and evaluated."
    r = run('finetune', ref[0], '--data', 'digits', '--size', '16', '--epochs', '1', '--bs', '64', '--subset', '128', '--threads', '1',
            '--no-bar', '--aug', '--ema', '0.5', '--out', tmp_path, '--name', 'ft')
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path/'ft'/'metrics.json').read_text())
    assert m['args']['kit']['recipe'] == 'digits' and m['args']['kit']['label_smoothing'] == 0.1 and 0 <= m['ema_test_accuracy'] <= 1
    assert (tmp_path/'ft'/'model_ema.safetensors').is_file() and m['model_weights'] == 'the weights after the last training step'
