"""Two local "nodes" (two train.py processes with NODE_RANK 0 and 1, gloo) train into one run
folder, as docs/training.md "Several machines" describes; their validation equals one process's on the
same weights, and only rank 0 wrote the folder's files."""

import os
import socket
import subprocess
import sys

import lightning as L
import pandas as pd
import pytest

from faultlib import REPO, SMALL, temp_files
from trashseg.checkpoint import read_checkpoint, run_config
from trashseg.data.datamodule import TrashDataModule
from trashseg.training.module import SegmentationModule


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_share_one_run_folder_and_validate_like_one_process(synthetic_root, tmp_path):
    run_dir = tmp_path / "runs" / "quickstart" / "shared"
    args = [*SMALL, f"data.root={synthetic_root}", f"runs_dir={tmp_path / 'runs'}", "trainer=ddp_cpu",
            "trainer.num_nodes=2", "trainer.devices=1", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
            # every parameter used (DDP requires it): the full-depth encoder with a narrow decoder
            "model.encoder_depth=5", "model.decoder.decoder_channels=[32,16,16,8,8]"]
    port = str(free_port())
    nodes = []
    for rank in ("0", "1"):
        env = dict(os.environ, NODE_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        nodes.append(subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]

    table = pd.read_csv(run_dir / "metrics.csv")
    val = table.dropna(subset=["val/mIoU"])
    assert val[["epoch", "step"]].values.tolist() == [[0, 2]]  # 3 steps an epoch per node, logged once
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert temp_files(run_dir) == []

    # The last validation ran on the weights in last.ckpt: validate them again in one process.
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    cfg = run_config(ckpt, run_dir)
    module = SegmentationModule(cfg)
    module.load_state_dict(ckpt["state_dict"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    single = trainer.validate(module, datamodule=TrashDataModule(**cfg["data"], augment=cfg["augment"]), verbose=False)[0]
    logged = val.iloc[-1]
    for key in ("val/mIoU", "val/pixel_acc", "val/mIoU_per_image", "val/loss"):
        assert logged[key] == pytest.approx(single[key], abs=1e-6), key
