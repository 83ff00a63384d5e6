"""What the integration tests share: `interrupt`, a run stopped by a signal at its first checkpoint."""
import os, signal, subprocess, sys, time
from pathlib import Path
import pytest


def interrupt_at_first_checkpoint(command, args, run:Path, sig=signal.SIGINT, env=None, timeout=300):
    """Start `vit-nb-<command> *args --out <run's parent> --name <run's name>`, send `sig` as soon as `run/checkpoint.pt`
    exists; (exit status, stderr). Fails if the command ends first or no checkpoint appears within `timeout` seconds."""
    env = env or {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    proc = subprocess.Popen([str(Path(sys.executable).parent/f'vit-nb-{command}'), *map(str, args), '--out', str(run.parent),
                             '--name', run.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0, ck = time.time(), run/'checkpoint.pt'
    while not ck.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{ck} did not appear"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture
def interrupt():
    "`interrupt(command, args, run, sig=SIGINT)`: see `interrupt_at_first_checkpoint`."
    return interrupt_at_first_checkpoint
