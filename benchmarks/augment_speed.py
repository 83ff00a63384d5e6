#!/usr/bin/env python
"""Cost of each batch augmentation of vit_nb.augment against one training step of the model, in one process.

    python benchmarks/augment_speed.py                    # both batch shapes, 20 interleaved repetitions
    python benchmarks/augment_speed.py --reps 3 --per-op  # also every TrivialAugment operation on its own
    python benchmarks/augment_speed.py --arch vit_mini_conv_s8_32 --shapes 128x1x32x32

For each batch shape (default 256x1x28x28, Fashion-MNIST's, and 128x3x32x32, CIFAR-10's) a model of the main job
(default: `vit_mini_patch4_28` for 1-channel 28x28 images, `vit_mini_patch4_32` for 3-channel 32x32 ones; `--arch`
builds any registered model for the shape) is timed on one training step (forward, cross-entropy, backward, Adam
step), and every augmentation on the same batch: PadCropFlip, RandomAffine, RandomResizedCropBatch, TrivialAugmentBatch,
RandomErasingBatch, MixUpCutMix (MixUp, CutMix, per image), and the whole batch pipeline of each recipe of
`AUG_RECIPES`. Items are interleaved (step, aug 1, aug 2, ..., step, ...) so that load changes hit all alike; the
table gives medians and each augmentation's time as a fraction of the step's. The machine is shared: report the load
average printed with the figures and compare only ratios measured in one run. This is a benchmark, not a test.
"""
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F

def parse_shape(s):
    B, C, H, W = (int(v) for v in s.lower().split('x'))
    return B, C, H, W

def default_arch(C, H):
    return {(1, 28): 'vit_mini_patch4_28', (3, 32): 'vit_mini_patch4_32'}.get((C, H), 'vit_mini_patch4_28')

def train_step_fn(arch, shape, device):
    "A closure running one training step of `arch` built for `shape`, and the model's name and size."
    from vit_nb.factory import create_model
    B, C, H, W = shape
    model = create_model(arch, in_chans=C, img_size=(H, W), num_classes=10).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.rand(shape, device=device), torch.randint(0, 10, (B,), device=device)
    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return step, sum(p.numel() for p in model.parameters())

def aug_fns(shape, device, per_op):
    "Name -> closure applying one augmentation to a batch of `shape` (images in [0,1], as in the pipeline)."
    from fastai.torch_core import TensorImage
    from vit_nb import augment as A
    B, C, H, W = shape
    x = TensorImage(torch.rand(shape, device=device))
    y = torch.randint(0, 10, (B,), device=device)
    tf = lambda t: (lambda: t(x, split_idx=0))
    fns = {'PadCropFlip(pad=2, flip)': tf(A.PadCropFlip(2, True)),
           'RandomAffine(10 deg, 1.1, p=0.5)': tf(A.RandomAffine(10., 1.1, 0.5)),
           f'RandomResizedCropBatch({H})': tf(A.RandomResizedCropBatch(H, flip=True)),
           'TrivialAugmentBatch()': tf(A.TrivialAugmentBatch()),
           'RandomErasingBatch(p=0.25)': tf(A.RandomErasingBatch(p=0.25)),
           'RandomErasingBatch(p=1, pixel)': tf(A.RandomErasingBatch(p=1., mode='pixel'))}
    for name, kw in [('MixUp(0.8)', dict(mixup_alpha=0.8)), ('CutMix(1.0)', dict(mixup_alpha=0., cutmix_alpha=1.)),
                     ('MixUp/CutMix per image', dict(mixup_alpha=0.8, cutmix_alpha=1., mode='elem'))]:
        mixer = A.MixUpCutMix(num_classes=10, **kw)
        fns[name] = (lambda m: lambda: m.mix(x, y))(mixer)
    for rname, r in A.AUG_RECIPES.items():
        tfms = sorted(A.batch_augs(**r['batch'], size=H if 'rrc' in r['batch'] else None), key=lambda t: t.order)
        mixer = A.MixUpCutMix(num_classes=10, **r['mix'])
        def pipeline(tfms=tfms, mixer=mixer):
            z = x
            for t in tfms: z = t(z, split_idx=0)
            return mixer.mix(z, y)
        fns[f'recipe {rname}'] = pipeline
    if per_op:
        for name in A.BATCH_OPS:
            mg = A.ta_magnitudes(name)
            m = torch.zeros(B, device=device) if mg is None else mg[20].expand(B).to(device)
            op = A.BATCH_OPS[name]
            fns[f'  op {name} (whole batch)'] = (lambda op, m, g: (lambda: op(x, m, 'bilinear') if g else op(x, m)))(op, m, name in A._GEOMETRIC)
    return fns

def timed(fn, device):
    if device.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter(); fn()
    if device.type == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--shapes', nargs='+', default=['256x1x28x28', '128x3x32x32'], help='batch shapes BxCxHxW')
    ap.add_argument('--arch', default=None, help='registered model to time the training step of (default: by shape)')
    ap.add_argument('--reps', type=int, default=20, help='interleaved repetitions (medians are reported)')
    ap.add_argument('--warmup', type=int, default=2, help='untimed repetitions first')
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--per-op', action='store_true', help='also time every TrivialAugment operation on the whole batch')
    ap.add_argument('--json', default=None, help='also write the results to this file')
    a = ap.parse_args()
    import warnings; warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
    if a.threads: torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0); np.random.seed(0)
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {', '.join(f'{v:.2f}' for v in load) if load else 'n/a'}")
    out = dict(device=str(device), threads=torch.get_num_threads(), load_before=load, results=[])
    for s in a.shapes:
        shape = parse_shape(s)
        arch = a.arch or default_arch(shape[1], shape[2])
        step, n_params = train_step_fn(arch, shape, device)
        items = {f'train step {arch}': step} | aug_fns(shape, device, a.per_op)
        times = {k: [] for k in items}
        for r in range(a.warmup + a.reps):
            for k, fn in items.items():
                t = timed(fn, device)
                if r >= a.warmup: times[k].append(t)
        ref = statistics.median(times[f'train step {arch}'])
        print(f"\nbatch {s}: model {arch} ({n_params / 1e6:.2f}M parameters), medians of {a.reps}")
        print(f"{'':38s} {'ms':>9s} {'/ step':>8s}")
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"{k:38s} {med * 1e3:9.2f} {med / ref:8.3f}")
            out['results'].append(dict(shape=s, arch=arch, item=k, median_ms=med * 1e3, ratio_to_step=med / ref))
    out['load_after'] = os.getloadavg() if hasattr(os, 'getloadavg') else None
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))

if __name__ == '__main__': main()
