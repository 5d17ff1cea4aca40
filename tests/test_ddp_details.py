"""DDP details: W&B's confusion matrix is the sum over processes (2 gloo processes), and the resume
state holds the CUDA generator when the run is on CUDA (monkeypatched here: no GPU in CI)."""

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from trashseg.checkpoint import read_checkpoint, run_config
from trashseg.data.datamodule import TrashDataModule
from trashseg.checkpoint import rng
from trashseg.training import run as run_module
from trashseg.training.run_config import plain_config
from trashseg.training.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# Run as a script: Lightning's ddp strategy starts rank 1 by running it again. Not ddp_spawn: spawn hands the
# processes the module's tensors in shared memory, so both ranks would add into one confusion matrix.
VALIDATE = """
import sys
from pathlib import Path
import lightning as L
import torch
from trashseg.checkpoint import read_checkpoint, run_config
from trashseg.data.datamodule import TrashDataModule
from trashseg.training.module import SegmentationModule

class SaveConfusion(L.Callback):
    def on_validation_end(self, trainer, module):  # where WandbMedia reads it, on global rank 0, which logs to W&B
        if trainer.is_global_zero:
            torch.save(module.last_confusion, sys.argv[2])

ckpt = read_checkpoint(sys.argv[1])
cfg = run_config(ckpt, sys.argv[1])
module = SegmentationModule(cfg)
module.load_state_dict(ckpt["state_dict"])
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                    use_distributed_sampler=False, enable_model_summary=False, callbacks=[SaveConfusion()])
trainer.validate(module, datamodule=TrashDataModule(**cfg["data"], augment=cfg["augment"]), verbose=False)
"""


@pytest.mark.slow
def test_wandb_confusion_matrix_is_the_sum_over_processes(synthetic_root, tmp_path):
    """9 val images, 2 gloo processes (5 and 4 images): what rank 0 hands W&B is the matrix of all 9, as
    one process computes it; before, it was rank 0's own 5 images."""
    coco = json.loads((synthetic_root / "val.json").read_text())
    coco["images"] = coco["images"][:9]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in {im["id"] for im in coco["images"]}]
    (tmp_path / "val9.json").write_text(json.dumps(coco))
    overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=4",
                 "data.val_batch_size=3", f"data.val_ann={tmp_path / 'val9.json'}", "logger=csv", "model.encoder_depth=3",
                 "model.decoder.decoder_channels=[16,8,8]", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                 "trainer.enable_progress_bar=false", f"runs_dir={tmp_path / 'runs'}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = tmp_path / "runs" / "quickstart" / "one"
    run_module.train(cfg, run_dir)  # a model that predicts more than one class
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    single = SaveConfusionHere()
    module = SegmentationModule(run_config(read_checkpoint(ckpt), ckpt))
    module.load_state_dict(read_checkpoint(ckpt)["state_dict"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[single])
    trainer.validate(module, datamodule=TrashDataModule(**module.cfg["data"], augment=module.cfg["augment"]), verbose=False)

    script = tmp_path / "validate.py"
    script.write_text(VALIDATE)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    result = subprocess.run([sys.executable, str(script), str(ckpt), str(tmp_path / "ddp.pt")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert int(single.confusion.sum()) > 0 and torch.equal(ddp, single.confusion)


class SaveConfusionHere(L.Callback):
    def on_validation_end(self, trainer, module):
        self.confusion = module.last_confusion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resume_state_holds_the_cuda_generator_when_the_run_is_on_cuda(monkeypatch):
    fake = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": fake.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    assert "cuda" not in rng.capture(torch.device("cpu"))

    device = torch.device("cuda", 1)
    state = rng.capture(device)
    draws = torch.rand(3)  # what a run resumed from `state` must draw next
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # as a checkpoint is read
    torch.rand(5)  # the generator moves on
    rng.restore(loaded, device)
    assert torch.equal(torch.rand(3), draws)
    assert len(restored) == 1 and torch.equal(restored[0][0], fake) and restored[0][1] == device
    rng.restore(loaded, torch.device("cpu"))  # a GPU checkpoint resumed on a CPU: the CPU generators only
    assert len(restored) == 1


def test_wandb_media_tables_this_validations_confusion_matrix(synthetic_root, tmp_path, monkeypatch):
    """WandbMedia runs after the module has summed this validation's matrix (before, it ran first and
    tabled the previous validation's, none at the first)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from trashseg.training.callbacks.wandb_media import WandbMedia

    overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.val_batch_size=5",
                 "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = plain_config(compose(config_name="train", overrides=overrides))
    logged = []
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", lambda self, data, *args, **kwargs: logged.append(data))
    module = SegmentationModule(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=WandbLogger(save_dir=str(tmp_path), offline=True),
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[WandbMedia()])
    trainer.validate(module, datamodule=TrashDataModule(**cfg["data"], augment=cfg["augment"]), verbose=False)
    tables = [d["val/confusion_matrix"] for d in logged if "val/confusion_matrix" in d]
    assert len(tables) == 1
    counts = torch.tensor([row[1:] for row in tables[0].data])
    assert counts.sum() > 0 and torch.equal(counts, module.last_confusion)
    wandb.finish()
