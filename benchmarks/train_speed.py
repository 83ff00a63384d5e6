#!/usr/bin/env python
"""Training-speed benchmark (not a test). Two measurements:

(a) accuracy against wall-clock time of the main job: runs `vit-nb-train` (its defaults, plus any extra arguments
    given after `--`) and reports the time of the first epoch reaching 90% and 92% Fashion-MNIST test accuracy;
    with `--compile-ab N`, N pairs of the main job eager and with `--compile`, alternating (eager first in odd pairs,
    compiled first in even ones), and their medians: the whole command, the first epoch (which pays for the
    compilation) and the later epochs (the compiled steps);
    with `--suite`, the settings of `SUITE` one after another in one run (the README's table): the main job, its short
    setting, a pure ViT, the ResNet a user would pick instead (the same command and recipe, `--arch` changed) and the main
    job with `--compile`; each with its target, if any;
(b) fastai's overhead: the main job's model (vit_mini_conv_s8_32), data, optimiser hyper-parameters and number of steps, trained by
    `learn.fit_pretrain` (with its callbacks: schedule, clipping, recorder, checkpoint-free) and by a bare PyTorch loop,
    interleaved in one process; reports the ratio of their best times.

The machine is shared: report `uptime` with the figures; compare only ratios measured in one run.

Usage: python benchmarks/train_speed.py [--skip-a] [--skip-b] [--steps 60] [--compile-ab N | --suite [NAME ...]]
                                      [-- extra vit-nb-train arguments]
"""
import argparse, json, math, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

def uptime():
    try: return os.getloadavg()
    except OSError: return None

def bench_accuracy(extra):
    out = Path(tempfile.mkdtemp())
    exe = Path(sys.executable).parent/'vit-nb-train'
    t0 = time.perf_counter()
    r = subprocess.run([str(exe), '--no-bar', '--out', str(out), '--name', 'bench', *extra], text=True)
    wall = time.perf_counter() - t0
    if r.returncode: sys.exit(f"vit-nb-train failed with status {r.returncode}")
    m = json.loads((out/'bench'/'metrics.json').read_text())
    setup = wall - m['train_seconds']              # start-up, data, evaluation and writing outside the fit
    res = dict(wall_seconds=round(wall, 1), train_seconds=m['train_seconds'], test_accuracy=m['test_accuracy'],
               params=m['params'], args={k: v for k, v in m['args'].items() if v is not None},
               epochs=[(e['epoch'], e['seconds'], round(e['accuracy'], 4)) for e in m['epochs']])
    for thr in (0.90, 0.92):
        hit = next((e for e in m['epochs'] if e['accuracy'] >= thr), None)
        res[f'first_epoch_at_{thr:.2f}'] = None if hit is None else dict(epoch=hit['epoch'], fit_seconds=hit['seconds'],
                                                                          wall_seconds_est=round(hit['seconds'] + setup, 1))
    return res

SUITE = {   # name: (vit-nb-train arguments added to the defaults, target test accuracy, target wall-clock seconds)
    'main': ([], 0.93, 600),
    'short': (['--epochs', '2', '--size', '24'], 0.90, 180),
    'pure_vit': (['--arch', 'vit_mini_patch4_28', '--patch-size', '7', '--depth', '4', '--epochs', '12'], 0.91, 600),
    'resnet': (['--arch', 'resnet_mini_s2_32'], None, None),
    'main_compiled': (['--compile'], 0.93, 600),
}

def bench_suite(names, extra):
    "The settings `names` of `SUITE`, one after another: each one's figures and whether it met its target."
    out = {}
    for n in names:
        args, acc, secs = SUITE[n]
        r = bench_accuracy(args + extra)
        r.update(setting=n, target_accuracy=acc, target_seconds=secs,
                 met=None if acc is None else bool(r['test_accuracy'] >= acc and r['wall_seconds'] <= secs))
        print(json.dumps({k: r[k] for k in ('setting', 'wall_seconds', 'train_seconds', 'test_accuracy', 'epochs', 'met')}), flush=True)
        out[n] = r
    return out

def bench_compile(extra, pairs):
    "The main job eager and compiled (`--compile`), alternately, `pairs` times each: per-run figures and their medians."
    runs = []
    for i in range(pairs):
        for compiled in ((False, True) if i % 2 == 0 else (True, False)):
            r = bench_accuracy(extra + (['--compile'] if compiled else []))
            ep = r['epochs']                                 # (epoch, seconds since the fit started, accuracy)
            r.update(compiled=compiled, first_epoch_seconds=ep[0][1],
                     later_epoch_seconds=round((ep[-1][1] - ep[0][1]) / (len(ep) - 1), 1) if len(ep) > 1 else None)
            runs.append(r)
            print(json.dumps({k: r[k] for k in ('compiled', 'wall_seconds', 'train_seconds', 'first_epoch_seconds',
                                                'later_epoch_seconds', 'test_accuracy')}), flush=True)
    def med(k, c):
        v = [r[k] for r in runs if r['compiled'] == c and r[k] is not None]
        return statistics.median(v) if v else None
    keys = ('wall_seconds', 'train_seconds', 'first_epoch_seconds', 'later_epoch_seconds', 'test_accuracy')
    summary = {m: {k: med(k, c) for k in keys} for m, c in (('eager', False), ('compiled', True))}
    e, c = summary['eager'], summary['compiled']
    summary['eager_over_compiled'] = {k: round(e[k] / c[k], 3) if e[k] and c[k] else None for k in keys[:4]}   # > 1: compiled is faster
    return dict(pairs=pairs, runs=runs, summary=summary)

def bench_overhead(steps, arch='vit_mini_conv_s8_32', bs=128, n_rep=3, **over):
    import torch
    from fastai.torch_core import set_seed
    from vit_nb.data import fashion_mnist, tensor_dls
    from vit_nb.learner import vit_learner
    from vit_nb.cli import _preset_size
    set_seed(0)
    dls = tensor_dls(fashion_mnist(), bs=bs, size=_preset_size(arch), n_train=steps * bs, n_valid=2 * bs)   # resized as vit-nb-train does
    learn = vit_learner(dls, arch, label_smoothing=0.1, config=over or None)
    model = learn.model
    def fastai_epoch():
        with learn.no_bar(), learn.no_logging(): learn.fit_pretrain(1, lr=1e-3, wd=0.05, warmup=0.1, decay='cos', clip=1.)
    def bare_epoch():                      # what a hand-written loop does: same batches, AdamW, warm-up+cosine, clipping
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
        n = len(dls.train); w = max(1, int(0.1 * n))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / w if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / (n - w))))
        lf = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        model.train()
        for xb, yb in dls.train:
            xb, yb = xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)    # plain tensors, as a bare loop has
            loss = lf(model(xb), yb); loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.); opt.step(); sched.step(); opt.zero_grad()
        model.eval()
        with torch.no_grad():
            for xb, yb in dls.valid: lf(model(xb.as_subclass(torch.Tensor)), yb.as_subclass(torch.Tensor))
    best = dict(fastai=9e9, bare=9e9)
    for _ in range(n_rep):
        for k, f in (('fastai', fastai_epoch), ('bare', bare_epoch)):
            t0 = time.perf_counter(); f(); best[k] = min(best[k], time.perf_counter() - t0)
    return dict(steps=len(dls.train), bs=bs, arch=arch, overrides=over, fastai_s=round(best['fastai'], 2),
                bare_s=round(best['bare'], 2), ratio=round(best['fastai'] / best['bare'], 3))

if __name__ == '__main__':
    argv = sys.argv[1:]
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--skip-a', action='store_true'); p.add_argument('--skip-b', action='store_true')
    p.add_argument('--steps', type=int, default=60)
    p.add_argument('--compile-ab', type=int, default=0, metavar='N',
                   help='time the main job eager and with --compile, alternately, N times each (instead of (a))')
    p.add_argument('--suite', nargs='*', choices=list(SUITE), metavar='NAME',
                   help=f"run these settings (default: all: {', '.join(SUITE)}) one after another (instead of (a))")
    a = p.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    res = dict(load_before=uptime())
    if not a.skip_b: res['overhead'] = bench_overhead(a.steps); print(json.dumps(res['overhead']), flush=True)
    if a.suite is not None: res['suite'] = bench_suite(a.suite or list(SUITE), extra)
    elif a.compile_ab: res['compile'] = bench_compile(extra, a.compile_ab)
    elif not a.skip_a: res['accuracy'] = bench_accuracy(extra)
    res['load_after'] = uptime()
    print(json.dumps(res, indent=1))
