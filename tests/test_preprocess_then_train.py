"""A hospital-style export goes through preprocess_filenames.py and straight into main.py."""
import json

import cv2
import numpy as np
import pytest

from hipx.data import filenames
import main
import preprocess_filenames


@pytest.mark.slow
def test_main_trains_on_preprocess_output_without_any_other_step(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    lines = ["patient_id,image,T_score,sex,age,height,weight"]
    for i in range(40):
        osteo = i % 3 == 0
        img = rng.integers(0, 80, size=(120, 90), dtype=np.uint8)
        img[30:90, 30:60] += 60 if osteo else 150
        name = f"p{i}.png" if i % 2 else f"p{i}.jpg"
        cv2.imwrite(str(raw / name), img)
        tscore = -3.0 if osteo else -1.0
        lines.append(f"P{i:03d},{name},{tscore},{'F' if i % 4 else 'M'},{55 + i % 30},{160 + i % 20},{60 + i % 15}")
    lines.append("P999,missing.png,-1.0,F,60,160,60")  # skipped, not fatal
    (raw / "patient_list.csv").write_text("\n".join(lines) + "\n")

    data = tmp_path / "data"
    preprocess_filenames.main(["--images", str(raw), "--out", str(data), "--tscore-col", "T_score",
                               "--height-col", "height", "--weight-col", "weight", "--size", "64", "37"])
    assert "missing.png" in (data / "skipped.csv").read_text()
    out = tmp_path / "outs"
    result = main.main(["--data_dir", str(data), "--depth", "10", "--image_size", "64", "37", "--epoch", "2",
                        "--batch_size", "8", "--workers", "0", "--device", "cpu", "--save_dir", "r", "--out_root",
                        str(out), "--late_fuse", "yes"])
    run = out / "r" / "fold"
    assert json.loads((run / "test_metrics.json").read_text())["n_images"] == result["n_images"]
    written = sorted(p.name for p in (data / "test").iterdir())
    assert result["n_images"] == len(written) > 0
    assert all(filenames.decode(n).bmi > 0 for n in written)  # BMI from height and weight reached the names
