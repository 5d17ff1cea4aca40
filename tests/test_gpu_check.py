"""benchmarks/gpu_check.py, the one-call GPU check, runs end to end on the CPU at 64 px so it never rots
before a GPU session spends its minutes on it."""

import re
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_the_gpu_check_prints_every_section_of_its_table_on_a_cpu(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--tiny", "--device", "cpu", "--compile-backend", "eager",
                                      "--peak-tflops", "0.001"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    table = out[out.index("| section | setting"):]
    rows = [line.split(" | ") for line in table.splitlines()[2:] if line.startswith("| ")]
    sections = [r[0].strip("| ") for r in rows]
    assert sections == ["quickstart"] * 2 + ["train"] * 4 + ["inference"] + ["loader"] * 2
    for row in rows[:2]:  # both precisions trained and validated
        assert 0 <= float(re.search(r"best val mIoU ([\d.]+)", row[2]).group(1)) <= 1
    settings = [r[1] for r in rows[2:6]]
    assert settings == ["unet_lite0 bf16", "unet_lite0 bf16 channels_last", "unet_lite0 bf16 compile(eager)",
                        "unet_lite0 bf16 channels_last compile(eager)"]
    for row in rows[2:]:
        assert float(re.search(r"([\d.]+) img/s", row[2]).group(1)) > 0
    # MFU = img/s x 3 x GFLOPs / (peak TFLOP/s x 1000), from the row's own rounded figures (a tiny peak keeps it near 100%)
    speed, gflops, mfu = re.search(r"([\d.]+) img/s.*?([\d.]+) GFLOPs/img, MFU ([\d.]+)%", " | ".join(rows[2])).groups()
    assert float(mfu) == pytest.approx(100 * float(speed) * 3 * float(gflops) / 0.001 / 1000, rel=0.01)
