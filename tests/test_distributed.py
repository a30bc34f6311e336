"""Scale-out through accelerate: two CPU processes (gloo, started by torchrun) give the same
adapter as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import rag_dataset

from ragtune.config import TrainConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import os
import sys
from pathlib import Path
from datasets import load_from_disk
from ragtune.config import TrainConfig
from ragtune.train import train
cfg = TrainConfig.model_validate_json(sys.argv[3])
res = train(load_from_disk(sys.argv[1]), sys.argv[2], cfg, sys.argv[4])
# one file per rank: two processes printing to one pipe can interleave their lines
Path(sys.argv[4], f"rank{os.environ['RANK']}.txt").write_text(str(res.processes))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_match_one(tiny_model_dir, tokenizer, tmp_path):
    from safetensors.torch import load_file

    from ragtune.train import train

    ds = rag_dataset(tokenizer, 32, 4)
    ds.save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "run.py").write_text(SCRIPT)
    common = dict(max_steps=3, precision="fp32", lora_dropout=0.0, lr=3e-3, warmup_ratio=0.0)
    train(ds, tiny_model_dir, TrainConfig(batch_size=8, **common), tmp_path / "one")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cfg = TrainConfig(batch_size=4, **common).model_dump_json()  # 2 processes x 4 = one step of 8
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(tmp_path / "run.py"),
            str(tmp_path / "ds"),
            str(tiny_model_dir),
            cfg,
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / "two" / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    a = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    assert not torch.allclose(a[k], torch.zeros_like(a[k]))
