"""Hostile input through the real console scripts: every user mistake exits 2 with a message that names the option or
path and what to do, prints no traceback, and changes nothing on disk; a full disk loses nothing; a finished run is
never rewritten; files are written with the user's usual mode.

One tiny trained run (digits, `vit_micro_patch2_8`, one epoch) is shared by all cases. The cases run two at a time
(each is a separate process), and the whole workspace is hashed before and after each one."""
import hashlib, json, os, resource, shutil, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
TINY = ['--data', 'digits', '--arch', 'vit_micro_patch2_8', '--patch-size', '4', '--bs', '64', '--threads', '1', '--no-bar']


def run(cmd, *args, cwd=None, fsize=None, timeout=300):
    "Run `vit-nb-<cmd>` as a user would; `fsize` caps the size of any file it writes (as `ulimit -f`)."
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=timeout, preexec_fn=limit)


def tree(root:Path) -> dict:
    "Every path under `root` with the hash of its content (folders: None) and its mode."
    out = {}
    for p in sorted(root.rglob('*')):
        if p.is_symlink(): out[str(p)] = ('link', os.readlink(p)); continue
        out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None, p.stat().st_mode & 0o777)
    return out


@pytest.fixture(scope='module')
def ws(tmp_path_factory):
    "The workspace: a trained run, weights of every kind of damage, image folders and files of every kind of trouble."
    w = tmp_path_factory.mktemp('hostile')
    r = run('train', *TINY, '--epochs', '1', '--out', w/'runs', '--name', 'base')
    assert r.returncode == 0, r.stderr
    base = w/'runs'/'base'
    good = (base/'model.safetensors').read_bytes()
    (w/'zero.safetensors').write_bytes(b'')
    (w/'random.safetensors').write_bytes(bytes(range(256)) * 8)
    (w/'cut.safetensors').write_bytes(good[:len(good) // 2])
    (w/'random.pt').write_bytes(bytes(range(256)) * 8)
    (w/'weights.txt').write_text('not weights')
    from safetensors.torch import save_file, load_file
    sd = load_file(base/'model.safetensors')
    save_file(sd, w/'badmeta.safetensors', metadata={'vit_nb.config': '{"dim": 64,'})
    save_file(sd, w/'bare.safetensors')                                   # no configuration: heads unknown for width 64
    import torch
    from vit_nb.factory import create_model, save_model
    save_model(create_model('vit_micro_patch2_8', patch_size=4, num_classes=3), w/'three.safetensors', vocab=['a', 'b', 'c'])
    save_model(create_model('vit_micro_patch2_8', patch_size=4, num_classes=3), w/'three_novocab.safetensors')
    # images
    rng = np.random.default_rng(0)
    img = lambda: Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8))
    img().save(w/'photo.png')
    (w/'text.png').write_text('not an image')
    (w/'zero.png').write_bytes(b'')
    data = (w/'photo.png').read_bytes(); (w/'cut.png').write_bytes(data[:len(data) // 3])
    (w/'a_folder.png').mkdir()
    # image folders
    (w/'empty').mkdir()
    (w/'flat').mkdir(); [img().save(w/'flat'/f'{i}.png') for i in range(4)]       # images, no class folders
    for c in ('a', 'b'): (w/'noreadable'/c).mkdir(parents=True)
    img().save(w/'noreadable'/'a'/'0.png'); img().save(w/'noreadable'/'a'/'1.png')
    (w/'noreadable'/'b'/'x.png').write_text('not an image')                       # class b: nothing readable
    # --out troubles
    (w/'a_file').write_text('x')
    return dict(w=w, base=base)


W = '{w}'
CASES = [  # (command, args with {w} for the workspace and {base} for the trained run, words the message must hold)
    # vit-nb-train: numbers out of range
    ('train', ['--epochs', '0'], ['--epochs', 'at least 1']),
    ('train', ['--bs', '0'], ['--bs']),
    ('train', ['--lr', '-1'], ['--lr', 'positive']),
    ('train', ['--lr', 'nan'], ['--lr']),
    ('train', ['--wd', '-5'], ['--wd', '>= 0', '-5']),
    ('train', ['--label-smoothing', '2'], ['--label-smoothing', '[0, 1)']),
    ('train', ['--every', '-1'], ['--every', '-1']),
    ('train', ['--drop-path', '2'], ['--drop-path', 'got 2.0']),
    ('train', ['--mixup', '-1'], ['--mixup', '>= 0']),
    ('train', ['--cutmix', '-1'], ['--cutmix', '>= 0']),
    # vit-nb-train: the training kit
    ('train', ['--mix-prob', '2', '--mixup', '1'], ['--mix-prob', 'a probability in [0, 1]', '2.0']),
    ('train', ['--mix-prob', '0.5'], ['--mix-prob', 'add --mixup or --cutmix']),
    ('train', ['--switch-prob', '0.5', '--mixup', '1'], ['--switch-prob', 'needs both --mixup and --cutmix']),
    ('train', ['--erase', '1.5'], ['--erase', 'a probability in [0, 1]']),
    ('train', ['--ta-max', 'Rotate=30'], ['--ta-max', 'add --trivial']),
    ('train', ['--trivial', '--ta-max', 'Spin=3'], ['--ta-max', 'NAME=VALUE', "'Spin=3'"]),
    ('train', ['--trivial', '--ta-max', 'Rotate=x'], ['--ta-max', 'must be a number']),
    ('train', ['--ema', '1.5'], ['--ema', 'a decay in [0, 1)']),
    ('train', ['--avg-last', '9', '--epochs', '2'], ['--avg-last 9', 'at most --avg-last 2']),
    ('train', ['--avg-last', '-1'], ['--avg-last', '>= 0']),
    ('train', ['--aug', 'strong'], ['--aug', "'recipe'", "'strong'"]),
    ('finetune', ['{base}', '--aug', 'x'], ['--aug', "'basic'", "'x'"]),
    ('finetune', ['{base}', '--ema', '-0.1'], ['--ema', 'decay']),
    ('train', ['--warmup', '-1'], ['--warmup']),
    ('train', ['--clip', '-1'], ['--clip']),
    ('train', ['--n-valid', '0'], ['--n-valid', 'at least 1']),
    ('train', ['--n-valid', '0', '--no-bar'], ['--n-valid']),
    ('train', ['--subset', '0'], ['--subset']),
    ('train', ['--data', 'digits', '--subset', '10000000'], ['--subset', 'training images']),
    ('train', ['--arch', 'vit_tiny_patch16_244'], ['--arch', 'did you mean vit_tiny_patch16_224']),
    ('train', ['--decay', 'exp'], ['--decay']),
    ('train', ['--precision', 'fp8'], ['--precision']),
    ('train', ['--threads', '0'], ['--threads']),
    ('train', ['--size', '0'], ['--size']),
    ('train', ['--dim', '0'], ['--dim']),
    ('train', ['--heads', '-2'], ['--heads']),
    ('train', ['--epochs', 'three'], ['invalid int value']),
    ('train', ['--no-such-option'], ['unrecognized arguments']),
    # vit-nb-train: data and folders
    ('train', ['--data', '{w}/nothing_here'], ["is neither 'fashion_mnist', 'digits' nor an existing folder"]),
    ('train', ['--data', '{w}/empty', '--size', '8'], ['--data', 'no class folders']),
    ('train', ['--data', '{w}/flat', '--size', '8'], ['--data', 'no class folders']),
    ('train', ['--data', '{w}/noreadable', '--size', '8'], ['--data', 'no readable images']),
    ('train', ['--data', '{w}/flat'], ['--data', 'no class folders']),          # the preset's size
    ('train', ['--data-path', '{w}/nothing_here'], ['--data-path', 'is not a folder']),
    ('train', [*TINY, '--epochs', '1', '--out', '{w}/a_file'], ['--out', 'cannot hold run folders']),
    ('train', [*TINY, '--epochs', '1', '--out', '{w}/a_file/sub'], ['--out', 'cannot hold run folders']),
    ('train', [*TINY, '--epochs', '1', '--out', '{w}/runs', '--name', 'base'], ['exists already', '--name']),
    ('train', [*TINY, '--epochs', '1', '--out', '{w}/runs', '--name', '../escape'], ['--name', 'plain folder name']),
    ('train', ['--resume', '{w}/nothing_here'], ['--resume', 'does not exist']),
    ('train', ['--resume', '{w}/random.pt'], ['not a readable vit_nb training checkpoint']),
    ('train', ['--resume', '{w}/empty'], ['--resume', 'does not exist']),
    ('train', ['--resume', '{base}'], ['finished run', 'nothing was changed']),
    ('finetune', ['--resume', '{base}'], ['checkpoint of vit-nb-train, not vit-nb-finetune']),
    # vit-nb-finetune
    ('finetune', [], ['the weights to fine-tune are required']),
    ('finetune', ['{w}/nothing.safetensors'], ['does not exist']),
    ('finetune', ['{w}/zero.safetensors', '--data', 'digits'], ['zero.safetensors', 'not a readable', 'empty']),
    ('finetune', ['{w}/random.safetensors', '--data', 'digits'], ['random.safetensors', 'not a readable safetensors']),
    ('finetune', ['{w}/cut.safetensors', '--data', 'digits'], ['cut.safetensors', 'not a readable safetensors']),
    ('finetune', ['{w}/random.pt', '--data', 'digits'], ['random.pt', 'not a readable PyTorch']),
    ('finetune', ['{w}/weights.txt', '--data', 'digits'], ['unsupported weights file']),
    ('finetune', ['{w}/badmeta.safetensors', '--data', 'digits'], ['vit_nb.config', 'not valid JSON']),
    ('finetune', ['{w}/bare.safetensors', '--data', 'digits'], ['number of heads', '--preset']),
    ('finetune', ['{base}', '--data', 'digits', '--size', '15'], ['--size 15', 'multiple of the patch size 4']),
    ('finetune', ['{base}', '--layer-decay', '2'], ['--layer-decay']),
    ('finetune', ['{base}', '--epochs', '0'], ['--epochs']),
    ('finetune', ['{base}', '--warmup', '-1'], ['--warmup']),
    ('finetune', ['{base}', '--data', '{w}/empty'], ['--data', 'no class folders']),
    # vit-nb-evaluate
    ('evaluate', [], ['required']),
    ('evaluate', ['{w}/nothing_here'], ['does not exist']),
    ('evaluate', ['{base}', '--data', 'digits', '--bs', '0'], ['--bs']),
    ('evaluate', ['{base}', '--data', 'digits', '--n-valid', '0'], ['--n-valid']),
    ('evaluate', ['{base}', '--data', 'digits', '--json-out', '{w}/empty'], ['--json-out', 'is a folder']),
    ('evaluate', ['{base}', '--data', 'digits', '--json-out', '{w}/no_folder/r.json'], ['--json-out', 'does not exist']),
    ('evaluate', ['{w}/three.safetensors', '--data', 'digits'], ["trained on classes ['a', 'b', 'c']", "'0', '1'"]),
    ('evaluate', ['{w}/three_novocab.safetensors', '--data', 'digits'], ['3 classes', 'the data 10']),
    ('evaluate', ['{base}', '--data', '{w}/noreadable'], ['--data', 'no readable images']),
    ('evaluate', ['{w}/zero.safetensors', '--data', 'digits'], ['not a readable']),
    ('evaluate', ['{base}', '{w}/three.safetensors', '--data', 'digits'], ['cannot make an ensemble', 'base', 'three.safetensors', '10', '3']),
    ('evaluate', ['{base}', '{w}/zero.safetensors', '--data', 'digits'], ['cannot make an ensemble', 'zero.safetensors']),
    ('evaluate', ['{base}', '--data', 'digits', '--bins', '0'], ['--bins', 'at least 1']),
    ('evaluate', ['{base}', '--data', 'digits', '--out', '{w}/a_file'], ['--out', 'not a folder']),
    ('evaluate', ['{base}', '--data', 'digits', '--temperature', '--n-valid', '2'], ['--temperature', 'at least 4 test images']),
    # vit-nb-predict
    ('predict', ['{base}'], ['at least one image']),
    ('predict', ['{base}', '{w}/missing.png'], ['missing.png', 'does not exist']),
    ('predict', ['{base}', '{w}/a_folder.png'], ['a_folder.png', 'is not a file']),
    ('predict', ['{base}', '{w}/text.png'], ['cannot read the images']),
    ('predict', ['{base}', '{w}/zero.png'], ['cannot read the images']),
    ('predict', ['{base}', '{w}/cut.png'], ['cannot read the images']),
    ('predict', ['{base}', '{w}/photo.png', '--topk', '0'], ['--topk']),
    ('predict', ['{w}/random.safetensors', '{w}/photo.png'], ['not a readable']),
    ('predict', ['{base}', '{w}/three.safetensors', '{w}/photo.png'], ['cannot make an ensemble', 'three.safetensors']),
    ('predict', ['{base}', '{base}'], ['at least one image file after the runs']),
    # vit-nb-explain
    ('explain', ['{base}'], ['one or more image files']),
    ('explain', ['{base}', '{w}/photo.png', '--mean', 'abc', '--out', '{w}/ex'], ['--mean must be numbers', "'abc'"]),
    ('explain', ['{base}', '{w}/photo.png', '--mean', '0.1,0.2', '--out', '{w}/ex'], ['--mean and --std take one value, or one per channel', 'got 2 and 1']),
    ('explain', ['{base}', '{w}/photo.png', '--layer', '9', '--out', '{w}/ex'], ['layer 9 is out of range']),
    ('explain', ['{base}', '{w}/photo.png', '--layer', 'last'], ['invalid int value']),
    ('explain', ['{base}', '{w}/photo.png', '--out', '{w}/a_file'], ['--out', 'not a folder']),
    ('explain', ['{base}', '{w}/photo.png', '--out', '{w}/a_file/sub'], ['--out', 'cannot be written']),
    ('explain', ['{base}', '{w}/photo.png', '{w}/text.png', '--out', '{w}/ex'], ['cannot read', 'text.png']),
    ('explain', ['{w}/bare.safetensors', '{w}/photo.png', '--out', '{w}/ex'], ['--preset']),
    ('explain', ['{w}/bare.safetensors', '{w}/photo.png', '--preset', 'vit_micro_patch2_9', '--out', '{w}/ex'], ['did you mean']),
]


def test_hostile_cases(ws):
    w, base = ws['w'], ws['base']
    fill = lambda a: a.replace('{w}', str(w)).replace('{base}', str(base))
    cwd = w/'cwd'; cwd.mkdir(exist_ok=True)                                # where a default --out would land
    before = tree(w)
    def one(case):
        cmd, args, words = case
        return case, run(cmd, *map(fill, args), cwd=cwd)
    with ThreadPoolExecutor(2) as ex: results = list(ex.map(one, CASES))
    failed = []
    for (cmd, args, words), r in results:
        msg = r.stderr + r.stdout
        why = [f"exit {r.returncode}, not 2"] if r.returncode != 2 else []
        why += [f"no {x!r}" for x in words if x not in msg] + (['a traceback'] if 'Traceback' in msg else [])
        if why: failed.append(f"vit-nb-{cmd} {' '.join(args)}: {'; '.join(why)}\n    {msg.strip()[-400:]}")
    assert not failed, f"{len(failed)} of {len(CASES)} cases misbehave:\n" + '\n'.join(failed)
    assert tree(w) == before, "a failing command changed files: " + str(set(tree(w).items()) ^ set(before.items()))
    assert len(CASES) >= 80


def test_files_get_the_users_mode(ws):
    mask = os.umask(0o022); os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in ws['base'].iterdir()}
    assert modes == {n: 0o666 & ~mask for n in modes}, modes


def test_full_disk_loses_nothing(ws, tmp_path):
    "`ulimit -f`: a write that does not fit fails with 'the disk is full', leaves the previous file whole and no temporary."
    r = run('train', *TINY, '--epochs', '1', '--out', tmp_path, '--name', 'small', fsize=20_000)
    assert r.returncode == 1 and 'the disk is full' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path/'small').iterdir()) == []     # no checkpoint, no temporary
    # a finished run whose outputs could not be written: the limit again, then room to write them
    run_dir = tmp_path/'copy'; shutil.copytree(ws['base'], run_dir)
    for f in ('model.safetensors', 'metrics.json'): (run_dir/f).unlink()
    ckpt = (run_dir/'checkpoint.pt').read_bytes()
    r = run('train', '--resume', run_dir, fsize=20_000)
    assert r.returncode == 1 and 'the disk is full' in r.stderr and '--resume' in r.stderr, r.stderr
    assert (run_dir/'checkpoint.pt').read_bytes() == ckpt and not list(run_dir.glob('.*.tmp'))
    assert not (run_dir/'model.safetensors').exists()
    r = run('train', '--resume', run_dir)
    assert r.returncode == 0, r.stderr
    old, new = (json.loads((d/'metrics.json').read_text()) for d in (ws['base'], run_dir))
    assert [e['accuracy'] for e in new['epochs']] == [e['accuracy'] for e in old['epochs']]
    assert new['test_accuracy'] == old['test_accuracy']
    assert (run_dir/'checkpoint.pt').read_bytes() == ckpt                 # the state itself is untouched


def test_finetune_resumes_without_its_weights_file(ws, tmp_path):
    "The checkpoint holds the model: resuming a fine-tune needs neither the original weights file nor the folder it ran from."
    src = tmp_path/'src'; shutil.copytree(ws['base'], src)
    r = run('finetune', src/'model.safetensors', '--data', 'digits', '--size', '16', '--epochs', '1', '--bs', '64',
            '--threads', '1', '--no-bar', '--out', tmp_path, '--name', 'ft')
    assert r.returncode == 0, r.stderr
    ft = tmp_path/'ft'
    old = json.loads((ft/'metrics.json').read_text())
    for f in ('model.safetensors', 'metrics.json'): (ft/f).unlink()    # as if the outputs had not been written
    shutil.rmtree(src)                                                  # and the weights it started from are gone
    other = tmp_path/'elsewhere'; other.mkdir()
    r = run('finetune', '--resume', ft, cwd=other)
    assert r.returncode == 0, r.stderr
    new = json.loads((ft/'metrics.json').read_text())
    assert new['test_accuracy'] == old['test_accuracy'] and len(new['epochs']) == 1
