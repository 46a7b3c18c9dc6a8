"""README's command blocks, pasted in order into a fresh checkout: what they write is ignored by git,
and no block's output collides with an earlier block's."""
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def commands() -> list[list[str]]:
    """Every command of README's ```bash blocks, split as the shell would (continuation lines joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line:
                out.append(shlex.split(line))
    return out


def outputs() -> list[tuple[str, str]]:
    """(script, --out value) of every README command that writes into the checkout."""
    found = []
    for words in commands():
        script = next((w for w in words if w.endswith(".py")), None)
        for flag, value in zip(words, words[1:]):
            if flag == "--out":
                found.append((script, value))
    return found


def test_readme_predict_blocks_write_distinct_files():
    """The everyday Predict block and the real-radiographs block each keep their own output: pasted in
    order, the second is not refused for the first one's file."""
    names = [value for script, value in outputs() if script == "predict.py"]
    assert len(names) >= 2 and len(set(names)) == len(names), names


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_what_readme_writes_into_the_checkout_is_ignored_by_git():
    # a file as named; a folder by a file in it (git matches a folder pattern only against a known folder)
    written = [value if Path(value).suffix else f"{value.rstrip('/')}/a.png" for _, value in outputs()]
    written += ["outs/demo-20261205-120000/fold_Dense_LF/best.pth", "data/train/a.png", "raw/scan.dcm",
                "new_scans/V00000.dcm"]
    for path in written:
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert done.returncode == 0, f"{path} (written by a README command) is not ignored by .gitignore"
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", "hipx/core/cli.py"], cwd=ROOT).returncode == 1
