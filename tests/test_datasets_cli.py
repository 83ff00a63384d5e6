"""`--data cifar10` and `--data imagenette` through the console scripts, offline.

The tests write small folders in the layouts of fastai's archives (`URLs.CIFAR`: `cifar10/train/<class>/*.png`,
`cifar10/test/<class>/*.png` and `cifar10/labels.txt`; `URLs.IMAGENETTE_160`: `imagenette2-160/train/<WordNet id>/*.JPEG`,
`imagenette2-160/val/...`) and find them the three ways a user can: `--data-path`, the environment variable, and
fastai's data folder. Nothing is ever downloaded: every process runs with `VIT_NB_OFFLINE=1` and its own empty
`FASTAI_HOME`."""
import json, os, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
CIFAR10 = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
IMAGENETTE = {'n01440764': 'tench', 'n02102040': 'English springer', 'n03888605': 'parachute'}
MODEL = ['--arch', 'vit_mini_patch4_32', '--depth', '1', '--threads', '1', '--no-bar']


@pytest.fixture(scope='module')
def home(tmp_path_factory):
    "An empty FASTAI_HOME: fastai's data folder holds nothing unless a test puts it there."
    return tmp_path_factory.mktemp('fastai_home')


def env(home, **kw):
    e = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'VIT_NB_OFFLINE': '1', 'FASTAI_HOME': str(home), **kw}
    for k in ('VIT_NB_CIFAR10', 'VIT_NB_IMAGENETTE'):
        if k not in kw: e.pop(k, None)
    return e


def run(cmd, *args, home, timeout=600, **kw):
    return subprocess.run([str(BIN/f'vit-nb-{cmd}'), *map(str, args)], capture_output=True, text=True,
                          env=env(home, **kw), timeout=timeout)


def write_cifar10(root, n_train=12, n_test=4, seed=0) -> Path:
    "`root/cifar10` in the layout of fastai's CIFAR-10 archive: classes told apart by their mean colour, so a model can learn."
    rng, d = np.random.default_rng(seed), Path(root)/'cifar10'
    for split, n in (('train', n_train), ('test', n_test)):
        for k, c in enumerate(CIFAR10):
            (d/split/c).mkdir(parents=True)
            colour = np.array([25 * k, 255 - 25 * k, 128])
            for i in range(n):
                a = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d/split/c/f'{1000*k + i}_{c}.png')
    (d/'labels.txt').write_text('\n'.join(CIFAR10) + '\n')
    return d


def write_imagenette(root, n_train=6, n_val=3, seed=0) -> Path:
    "`root/imagenette2-160` in the layout of fastai's Imagenette archive: JPEG photos 160 pixels high, of varying widths."
    rng, d = np.random.default_rng(seed), Path(root)/'imagenette2-160'
    for split, n in (('train', n_train), ('val', n_val)):
        for k, wnid in enumerate(IMAGENETTE):
            (d/split/wnid).mkdir(parents=True)
            for i in range(n):
                a = np.clip(rng.normal(40 + 80 * k, 25, (160, 200 + 20 * i, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d/split/wnid/f'{wnid}_{i}.JPEG')
    return d


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def imagenette(tmp_path_factory):
    return write_imagenette(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def cifar_run(cifar, home, tmp_path_factory):
    "A few training steps on the CIFAR-10 folder, found through --data-path (the folder above cifar10/)."
    out = tmp_path_factory.mktemp('runs')
    r = run('train', '--data', 'cifar10', '--data-path', cifar.parent, *MODEL, '--epochs', '1', '--bs', '32', '--aug',
            '--out', out, '--name', 'c', home=home)
    assert r.returncode == 0, r.stderr[-3000:]
    return out/'c', r


def test_cifar10_train(cifar_run):
    d, r = cifar_run
    m = json.loads((d/'metrics.json').read_text())
    assert (m['n_train'], m['n_test'], m['args']['data']) == (120, 40, 'cifar10')
    assert '120 training / 40 test images' in r.stdout and '(32, 32) images' in r.stdout
    cfg = json.loads((d/'config.json').read_text())['model']
    assert (cfg['in_chans'], cfg['img_size'], cfg['num_classes']) == (3, [32, 32], 10)
    from vit_nb.factory import load_model
    model, info = load_model(d)
    assert info['vocab'] == CIFAR10 and info['mean'] == [0.5] * 3 and info['std'] == [0.5] * 3   # labml's normalisation


def test_cifar10_evaluate_env_and_fastai_folder(cifar_run, cifar, home, tmp_path):
    "Evaluate finds the data by $VIT_NB_CIFAR10 (the cifar10/ folder itself), and in fastai's data folder, with the run's accuracy."
    d, _ = cifar_run
    acc = json.loads((d/'metrics.json').read_text())['test_accuracy']
    r = run('evaluate', d, '--data', 'cifar10', '--json-out', tmp_path/'a.json', '--threads', '1', home=home, VIT_NB_CIFAR10=str(cifar))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path/'a.json').read_text())['accuracy'] == pytest.approx(acc, abs=1e-6)
    fh = tmp_path/'fh'
    (fh/'data').mkdir(parents=True)
    (fh/'data'/'cifar10').symlink_to(cifar, target_is_directory=True)   # where an earlier untar_data left it
    r = run('evaluate', d, '--data', 'cifar10', '--json-out', tmp_path/'b.json', '--threads', '1', home=fh)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path/'b.json').read_text())['n'] == 40


def test_imagenette_train_evaluate_finetune(imagenette, cifar_run, home, tmp_path):
    r = run('train', '--data', 'imagenette', *MODEL, '--epochs', '1', '--bs', '6', '--subset', '12', '--aug',
            '--out', tmp_path, '--name', 'i', home=home, VIT_NB_IMAGENETTE=str(imagenette.parent))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path/'i'/'metrics.json').read_text())
    assert (m['n_train'], m['n_test']) == (12, 9)                       # a class-balanced subset of the 18 training photos
    from vit_nb.factory import load_model
    _, info = load_model(tmp_path/'i')
    assert info['vocab'] == sorted(IMAGENETTE.values()) and info['mean'] == [0.485, 0.456, 0.406]   # ImageNet's statistics
    r = run('evaluate', tmp_path/'i', '--data', 'imagenette', '--data-path', imagenette, '--json-out', tmp_path/'e.json',
            '--threads', '1', home=home)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path/'e.json').read_text())['accuracy'] == pytest.approx(m['test_accuracy'], abs=1e-6)
    r = run('finetune', cifar_run[0], '--data', 'imagenette', '--data-path', imagenette, '--size', '32', '--epochs', '1',
            '--bs', '6', '--threads', '1', '--no-bar', '--out', tmp_path, '--name', 'ft', home=home)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path/'ft'/'config.json').read_text())['model']
    assert cfg['num_classes'] == 3


@pytest.mark.parametrize('name,title,url,var,layout', [
    ('cifar10', 'CIFAR-10', 'https://s3.amazonaws.com/fast-ai-sample/cifar10.tgz', 'VIT_NB_CIFAR10', 'train/<class>/*.png and test/<class>/*.png'),
    ('imagenette', 'Imagenette', 'https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz', 'VIT_NB_IMAGENETTE',
     'train/<WordNet id>/*.JPEG and val/<WordNet id>/*.JPEG'),
])
def test_offline_error(name, title, url, var, layout, tmp_path):
    "No copy anywhere and no download: exit 2 at once, saying the URL, the variable and the layout; no run folder."
    t0 = time.perf_counter()
    r = run('train', '--data', name, *MODEL, '--out', tmp_path/'runs', home=tmp_path/'empty_home')
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    for s in (f'--data {name}', f'{title} not found', 'VIT_NB_OFFLINE=1 turns downloads off', url, f'{var}=<folder>', layout, '--data-path'):
        assert s in r.stderr, (s, r.stderr)
    assert 'Traceback' not in r.stderr
    assert not (tmp_path/'runs').exists() or not any((tmp_path/'runs').iterdir())
    assert time.perf_counter() - t0 < 60                                # start-up only: nothing waits for a network


def test_wrong_folders(cifar, imagenette, home, tmp_path):
    "A --data-path or variable that names a folder without the data set is refused, naming it."
    r = run('train', '--data', 'cifar10', '--data-path', imagenette, *MODEL, '--out', tmp_path, home=home)
    assert r.returncode == 2 and f"path={str(imagenette)!r} does not hold CIFAR-10" in r.stderr, r.stderr[-2000:]
    r = run('train', '--data', 'imagenette', *MODEL, '--out', tmp_path, home=home, VIT_NB_IMAGENETTE=str(cifar))
    assert r.returncode == 2 and f"VIT_NB_IMAGENETTE={str(cifar)!r} does not hold Imagenette" in r.stderr, r.stderr[-2000:]
    r = run('train', '--data', 'cifar10', '--data-path', cifar, '--subset', '1000', *MODEL, '--out', tmp_path, home=home)
    assert r.returncode == 2 and '--subset 1000: there are 120 training images' in r.stderr, r.stderr[-2000:]
    assert not any(tmp_path.iterdir())


def test_help_states_the_defaults(cifar):
    "`vit-nb-train --help` describes each data set's augmentation and normalisation as the code has them."
    r = subprocess.run([str(BIN/'vit-nb-train'), '--help'], capture_output=True, text=True, env={**os.environ, 'COLUMNS': '1000'})
    help = r.stdout
    from vit_nb.data import cifar10, digits, fashion_mnist, FASHION_MNIST_SYSTEM
    def described(aug):
        parts = [f"pad-crop {aug['pad']}"] + (['flip'] if aug.get('flip') else [])
        if aug.get('max_rotate'): parts.append(f"rotate {aug['max_rotate']:g}°")
        if aug.get('max_zoom', 1) > 1: parts.append(f"zoom {aug['max_zoom']:g}")
        return ', '.join(parts)
    c = cifar10(cifar)
    assert f"'cifar10' (3x32x32; {described(c.aug)}, as labml; mean and std 0.5)" in help and c.stats == ([0.5] * 3, [0.5] * 3)
    assert f"'digits' (1x8x8; {described(digits().aug)};" in help
    if (FASHION_MNIST_SYSTEM/'train-images-idx3-ubyte.gz').exists():
        assert f"'fashion_mnist' (1x28x28; --aug: {described(fashion_mnist().aug)};" in help
    assert "'imagenette' (RGB photos, shortest side 160; random resized crop, flip, rotate 10°, zoom 1.1, lighting; ImageNet's mean and std)" in help
    for cmd in ('finetune', 'evaluate'):
        h = subprocess.run([str(BIN/f'vit-nb-{cmd}'), '--help'], capture_output=True, text=True, env={**os.environ, 'COLUMNS': '1000'}).stdout
        assert "'cifar10', 'imagenette'" in h and '--data-path' in h and (cmd == 'evaluate' or '--compile' in h)


LABML = ['--data', 'cifar10', '--arch', 'vit_labml_patch4_32', '--epochs', '32', '--bs', '64', '--lr', '2.5e-4',
         '--wd', '0', '--warmup', '0', '--decay', 'none', '--clip', '0', '--label-smoothing', '0', '--aug', 'basic']   # 13_cli's command


def test_labml_command(cifar, home, tmp_path):
    "labml's experiment, as the CLI notebook writes it, for one step: its model and a constant learning rate of 2.5e-4."
    nb = json.loads((Path(__file__).parents[1]/'nbs'/'13_cli.ipynb').read_text())
    text = ' '.join(' '.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown').replace('\\\n', ' ').split())
    assert 'vit-nb-train ' + ' '.join(LABML) in text                   # the documented command is the one tested
    args = LABML[:LABML.index('--epochs')] + ['--epochs', '1'] + LABML[LABML.index('--epochs') + 2:]
    r = run('train', *args, '--subset', '64', '--n-valid', '20', '--threads', '1', '--no-bar', '--out', tmp_path, '--name', 'l',
            home=home, VIT_NB_CIFAR10=str(cifar))
    assert r.returncode == 0, r.stderr[-3000:]
    import torch
    st = torch.load(tmp_path/'l'/'checkpoint.pt', weights_only=True)
    assert st['recorder']['lrs'] == [2.5e-4] and st['meta']['args']['arch'] == 'vit_labml_patch4_32'
    assert all(h['wd'] == 0 and h['mom'] == 0.9 and h['sqr_mom'] == 0.999 for h in st['opt']['hypers'])   # Adam, no weight decay
    cfg = json.loads((tmp_path/'l'/'config.json').read_text())['model']
    assert (cfg['dim'], cfg['depth'], cfg['heads'], cfg['patch_size']) == (512, 6, 8, 4)
