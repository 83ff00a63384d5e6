"""Hugging Face model folders through the real console scripts: what transformers' `save_pretrained` writes
(model.safetensors + its own config.json) is predicted, evaluated and fine-tuned by vit-nb-predict/-evaluate/-finetune.

The oracle is transformers itself, on the same image. A tiny random ViTForImageClassification of a width (48) whose head
count is not a standard one, so that the heads can only come from config.json; 10 labels named in id2label."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

transformers = pytest.importorskip('transformers')
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
FIXTURES = Path(__file__).parent/'fixtures'/'hf'


def run(cmd, *args, timeout=600):
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope='module')
def hf(tmp_path_factory):
    "A folder written by save_pretrained of a tiny random ViTForImageClassification, and the model."
    transformers.logging.set_verbosity_error(); transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=16,
                                 patch_size=4, num_channels=3, id2label=dict(enumerate(NAMES)))
    m = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.3)          # every tensor matters, probabilities spread
    d = tmp_path_factory.mktemp('hf')/'vit'
    m.save_pretrained(d)
    assert sorted(p.name for p in d.iterdir()) == ['config.json', 'model.safetensors']
    return d, m


@pytest.fixture(scope='module')
def png(tmp_path_factory):
    "An RGB PNG at the model's size (so no resizing), and its pixels."
    from PIL import Image
    px = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    f = tmp_path_factory.mktemp('img')/'x.png'
    Image.fromarray(px).save(f)
    return f, px


def hf_logits(m, px):
    "transformers' logits for pixels `px` (H, W, 3) uint8, normalised as HF's ViT image processor does (mean 0.5, std 0.5)."
    x = (torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad(): return m(pixel_values=x).logits[0]


def parse_predict(out, fn):
    "vit-nb-predict's line for `fn`: {class name: probability}."
    line = next(l for l in out.splitlines() if l.startswith(f'{fn}:'))
    pairs = [p.rsplit(' ', 1) for p in line[len(f'{fn}:'):].split(', ')]
    return {name.strip(): float(p) for name, p in pairs}


def test_predict_matches_transformers(hf, png):
    d, m = hf
    f, px = png
    r = run('predict', d, f, '--topk', '10', '--threads', '1')
    assert r.returncode == 0, r.stderr
    probs = parse_predict(r.stdout, f)
    assert sorted(probs) == sorted(NAMES)                                   # the class names came from id2label
    ref = hf_logits(m, px).softmax(-1)
    assert ref.max() - ref.min() > 0.05                                     # the probabilities are not all alike
    for i, name in enumerate(NAMES): assert abs(probs[name] - ref[i].item()) < 6e-4, (name, probs[name], ref[i].item())
    assert list(probs) == [NAMES[i] for i in ref.argsort(descending=True).tolist()]   # in transformers' order
    # the logits themselves, through the functions the command uses (predict prints probabilities to 3 decimals)
    from vit_nb.factory import load_model
    from vit_nb.data import image_batch
    model, info = load_model(d)
    assert (info['vocab'], model.cfg.heads, model.cfg.norm_eps, info['mean']) == (NAMES, 3, 1e-12, [0.5] * 3)
    with torch.no_grad(): ours = model(image_batch(f, model.cfg.img_size, model.cfg.in_chans, (info['mean'], info['std'])))[0]
    assert (ours - hf_logits(m, px)).abs().max() < 1e-4


def test_transformers4_folder_predicts(png):
    "The real transformers-4 checkpoint in tests/fixtures/hf, through the command: its class names, transformers 4's logits."
    f, _ = png
    r = run('predict', FIXTURES/'vit_tf4_classifier', f, '--topk', '3', '--threads', '1')
    assert r.returncode == 0, r.stderr
    assert set(parse_predict(r.stdout, f)) <= set(NAMES)


def test_without_config_json_refused(hf, png, tmp_path):
    "The same weights without HF's config.json: their head count is unknown, so the command refuses, saying what to do."
    d, _ = hf
    (tmp_path/'bare').mkdir(); shutil.copy(d/'model.safetensors', tmp_path/'bare')
    r = run('predict', tmp_path/'bare', png[0])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert 'cannot be read off the weights: pass config=' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_evaluate_refuses_other_classes(hf):
    "Evaluated on the digits, whose classes are '0'...'9', the folder's id2label names are reported as other classes."
    d, _ = hf
    r = run('evaluate', d, '--data', 'digits', '--n-valid', '50', '--threads', '1')
    assert r.returncode == 2 and "the model was trained on classes ['zero', 'one'" in r.stderr, r.stderr


def test_finetune_from_hf_folder(hf, tmp_path):
    "vit-nb-finetune starts from the HF folder (a new head for the digits, positions resampled to 32x32), and its run folder holds the whole configuration."
    d, _ = hf
    r = run('finetune', d, '--data', 'digits', '--size', '32', '--epochs', '1', '--bs', '64', '--subset', '128', '--n-valid', '64',
            '--threads', '1', '--no-bar', '--out', tmp_path, '--name', 'ft')
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path/'ft'/'config.json').read_text())['model']
    assert (cfg['dim'], cfg['heads'], cfg['depth'], cfg['norm_eps'], cfg['in_chans'], cfg['img_size']) == (48, 3, 2, 1e-12, 3, [32, 32])
    r = run('evaluate', tmp_path/'ft', '--data', 'digits', '--n-valid', '64', '--json-out', tmp_path/'ev.json', '--threads', '1')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path/'ev.json').read_text())['n'] == 64
