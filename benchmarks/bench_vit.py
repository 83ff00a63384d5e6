#!/usr/bin/env python
"""Throughput of vit_nb's ViT against timm's, on the same weights and input, in one process.

    python benchmarks/bench_vit.py                   # ViT-Ti/16 and ViT-S/16, batch 16, eager and compiled
    python benchmarks/bench_vit.py --no-compile --reps 5

For each model: forward (inference, no grad) and a training step (forward, backward, SGD step), eager and with
`torch.compile`; vit_nb and timm runs are interleaved (ABAB...) so that load changes hit both alike, and the
fp32 matmul rate of this machine (a 2048x2048 matmul) is measured between them. FLOPs come from PyTorch's
`FlopCounterMode` (matmuls, convolutions and attention; 2 FLOPs per multiply-add). Results print as a table and
are written to benchmarks/results.json. This is a benchmark, not a test: nothing asserts on speed.
"""
import argparse, json, os, platform, statistics, time
from pathlib import Path
import torch, timm
from torch.utils.flop_counter import FlopCounterMode
from vit_nb.model import create_vit
from vit_nb.experiments import CPU_ATTENTION   # attention's FLOPs on the CPU kernel, which PyTorch's counter misses

def matmul_gflops(n=2048, reps=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
    return 2 * n**3 / min(ts) / 1e9

def flops(model, x, train=False):
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as fc:
        if train: model(x).sum().backward()
        else:
            with torch.no_grad(): model(x)
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()

def bench_pair(name, batch, reps, compile_mode, train, peak_samples):
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).train(train)
    ours = create_vit(name).train(train)
    ours.load_state_dict(ref.state_dict())
    if not train:
        ref.eval(); ours.eval()
    x = torch.randn(batch, 3, 224, 224)
    fl = flops(ours, x, train)
    fl_ref = flops(ref, x, train)
    runners = {}
    for tag, m in (('vit_nb', ours), ('timm', ref)):
        f = torch.compile(m) if compile_mode else m
        def run(f=f, m=m):
            if train:
                out = f(x); out.logsumexp(-1).mean().backward()
                for p in m.parameters(): p.grad = None
            else:
                with torch.no_grad(): f(x)
        for _ in range(2 if not compile_mode else 3): run()          # warm-up (and compilation)
        runners[tag] = run
    times = {k: [] for k in runners}
    for r in range(reps):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for tag in order:
            t = time.perf_counter(); runners[tag](); times[tag].append(time.perf_counter() - t)
        peak_samples.append(matmul_gflops(reps=2))
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(model=name, mode='compiled' if compile_mode else 'eager', kind='train' if train else 'forward',
                batch=batch, flops_per_batch=fl, flops_match_timm=fl == fl_ref,
                img_s={k: batch / med[k] for k in med}, img_s_best={k: batch / best[k] for k in best},
                ratio_vs_timm=med['timm'] / med['vit_nb'],
                gflops={k: fl / med[k] / 1e9 for k in med}, gflops_best={k: fl / best[k] / 1e9 for k in best})

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--models', nargs='+', default=['vit_tiny_patch16_224', 'vit_small_patch16_224'])
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--reps', type=int, default=8)
    ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).with_name('results.json')))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    peaks = [matmul_gflops()]
    rows = []
    for compile_mode in ([False] if a.no_compile else [False, True]):
        for train in (False, True):
            for name in a.models:
                r = bench_pair(name, a.batch, a.reps, compile_mode, train, peaks)
                rows.append(r)
                print(f"{r['model']:24s} {r['kind']:7s} {r['mode']:8s} vit_nb {r['img_s']['vit_nb']:7.1f} img/s  "
                      f"timm {r['img_s']['timm']:7.1f} img/s  ratio {r['ratio_vs_timm']:.3f}  "
                      f"vit_nb {r['gflops']['vit_nb']:6.1f} GFLOP/s", flush=True)
    peak = max(peaks)
    for r in rows:
        r['frac_of_matmul_peak'] = {k: v / peak for k, v in r['gflops'].items()}
        r['frac_of_matmul_peak_best'] = {k: v / peak for k, v in r['gflops_best'].items()}
    print(f"\nfp32 2048^2 matmul: best {peak:.1f} GFLOP/s, median {statistics.median(peaks):.1f} over {len(peaks)} samples, "
          f"torch {torch.__version__}, {os.cpu_count()} threads, load {os.getloadavg()[0]:.2f}")
    print("\n| model | pass | mode | vit_nb img/s | timm img/s | vit_nb / timm | vit_nb % of matmul peak | timm % of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['kind']} | {r['mode']} | {r['img_s']['vit_nb']:.1f} | {r['img_s']['timm']:.1f} | "
              f"{r['ratio_vs_timm']:.2f} | {100*r['frac_of_matmul_peak']['vit_nb']:.0f}% | {100*r['frac_of_matmul_peak']['timm']:.0f}% |")
    json.dump(dict(rows=rows, matmul_peak_gflops=peak, matmul_samples=peaks, torch=torch.__version__,
                   timm=timm.__version__, machine=platform.processor() or platform.machine(),
                   threads=os.cpu_count(), load=os.getloadavg()), open(a.out, 'w'), indent=1)

if __name__ == '__main__': main()
