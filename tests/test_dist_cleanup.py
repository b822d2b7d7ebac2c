"""A rank ends with none of gloo's threads alive (builder/core/dist.py: init_group).

torch.distributed.nn.functional takes ``group.WORLD`` as its functions' default group
when imported; torch._dynamo imports it, and DistributedDataParallel's constructor (and
NeMo's models) import torch._dynamo. Imported after the group was made, it held the
group for good, so destroy_process_group no longer joined gloo's worker threads. They
outlived Python's finalization, and rarely (once in ~500 2-rank DPO runs here, once in
CI) one of them aborted its rank at exit ("terminate called without an active
exception", SIGABRT) after a complete run: torchrun then failed the run. The threads
are read when a rank's last atexit handler runs, where finalization begins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import SET, pattern_store, tiny_overrides, torchrun_error

pytestmark = pytest.mark.slow  # torchrun processes

# Runs `ttspo ARGS` as the CLI's __main__; at exit writes the process's threads (names
# from /proc) and whether torch._dynamo was imported to $THREADS_DIR/rank<RANK>.json.
RANK_AT_EXIT = """
import atexit, json, os, runpy, sys

def record():
    tasks = "/proc/self/task"
    names = sorted(open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks))
    path = os.path.join(os.environ["THREADS_DIR"], f"rank{os.environ['RANK']}.json")
    with open(path, "w") as f:
        json.dump({"threads": names, "dynamo": "torch._dynamo" in sys.modules}, f)

atexit.register(record)  # registered first, so it runs last
sys.argv = ["ttspo", *sys.argv[1:]]
runpy.run_module("ttspo.builder.cli", run_name="__main__")
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads read from /proc")
def test_a_two_rank_dpo_run_leaves_no_gloo_thread_at_exit(tmp_path):
    store = pattern_store(tmp_path / "store", groups=24, val_size=8)
    script = tmp_path / "rank_at_exit.py"
    script.write_text(RANK_AT_EXIT)
    steps = {"train.max_steps": 2, "train.val_every": 2, "train.checkpoint_every": 0,
             "data.pairs_per_device": 2}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), "--store", str(store.root), "train", "dpo", SET, "--out",
           str(tmp_path / "run"), *[w for o in tiny_overrides(**steps) for w in ("-o", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THREADS_DIR": str(tmp_path)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, torchrun_error(done.stderr)
    assert "2 process(es)" in done.stdout
    for rank in (0, 1):
        at_exit = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert at_exit["dynamo"]  # DDP ran and imported it: the case that kept the group
        assert "pt_gloo_runloop" not in at_exit["threads"], (rank, at_exit["threads"])


# A rank of `ttspo score --workers` (builder/core/dist.py: TorchComm, on a file
# rendezvous): a module NeMo's models bring, imported once the group exists, then close.
COMM_RANK = """
import json, os, sys
from ttspo.builder.core.dist import comm_from_env
comm = comm_from_env()
import torch._dynamo  # what loading a NeMo model imports, after the group
assert comm.all_gather(comm.rank) == [0, 1]
comm.close()
tasks = "/proc/self/task"
names = sorted(open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks))
print(json.dumps(names))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads read from /proc")
def test_a_worker_group_closed_after_a_late_import_leaves_no_gloo_thread(tmp_path):
    script = tmp_path / "comm_rank.py"
    script.write_text(COMM_RANK)
    base = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
            "TTSPO_RENDEZVOUS_FILE": str(tmp_path / "rendezvous")}
    ranks = [subprocess.Popen([sys.executable, str(script)], env={**base, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for rank in ranks:
        out, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err[-2000:]
        assert "pt_gloo_runloop" not in json.loads(out.splitlines()[-1]), out
