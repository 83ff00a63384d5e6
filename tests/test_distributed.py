"""Data-parallel training with two real CPU processes (gloo), launched by torchrun, through vit-nb-train."""
import json, math, os, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_torchrun_two_cpu_processes(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    cmd = [str(BIN/'torchrun'), '--standalone', '--nproc_per_node', '2', str(BIN/'vit-nb-train'),
           '--data', 'digits', '--arch', 'vit_micro_patch2_8', '--epochs', '3', '--subset', '1024', '--bs', '32',
           '--lr', '3e-3', '--threads', '1', '--no-bar', '--out', str(tmp_path), '--name', 'ddp']
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    # both ranks ran, each on half of every epoch: 1024 images / 32 per batch / 2 processes = 16 batches
    assert 'rank 0 of 2: 16 batches of 32 per epoch' in out and 'rank 1 of 2: 16 batches of 32 per epoch' in out, out[-3000:]
    assert out.count('test accuracy:') == 1                        # only rank 0 evaluates and writes
    m = json.loads((tmp_path/'ddp'/'metrics.json').read_text())
    assert len(m['epochs']) == 3 and m['n_test'] == 359
    losses = [e['valid_loss'] for e in m['epochs']]
    assert all(math.isfinite(l) for l in losses)
    assert losses[-1] < math.log(10), losses                      # it learned: better than the uniform prediction
    assert [p.name for p in tmp_path.iterdir()] == ['ddp']         # one run folder, shared by the ranks
