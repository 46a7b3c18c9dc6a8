"""README's command blocks, pasted in order into a fresh checkout: what they write is ignored by git,
and no block's output collides with an earlier block's; scripts/readme_blocks.py, which runs them and
compares what they print with README's output blocks, on made-up READMEs (no training)."""
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
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


# ------------------------------------------------ scripts/readme_blocks.py: README's blocks run and compared

def _blocks_script():
    spec = importlib.util.spec_from_file_location("readme_blocks", ROOT / "scripts" / "readme_blocks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_blocks"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rb = _blocks_script()

MADE_UP = """# A tool

```bash
make demo   # draws, trains
make test
```

It ends with:

```
best epoch 6, threshold 0.387
files in outs/demo-<time>/fold_A
```

```bash
source .venv/bin/activate
RUN=$(ls -d outs/demo-* | tail -n 1)
```

```bash
python predict.py --run $RUN data/test \\
    --out p.csv   # the '#' in 'a#b' stays
```
```text
13:04:29 INFO scored 150 images in 12.5 s (40 img/s)
150 predictions written to outs/demo-final/p.csv
```

```bash
python main.py --epoch 15 --save_dir cv
```

Prose between: not its output.

```csv
a,b
```
"""


def test_parse_pairs_each_bash_block_with_the_output_block_right_after_it():
    blocks = rb.parse_readme(MADE_UP, rules=())
    assert [b.index for b in blocks] == [1, 2, 3, 4]
    demo, setup, predict, train = blocks
    assert demo.expected is None and demo.next_output[0][0] == "best epoch 6, threshold 0.387"
    assert setup.setup and not predict.setup and setup.expected is None
    assert predict.expected == ["13:04:29 INFO scored 150 images in 12.5 s (40 img/s)",
                                "150 predictions written to outs/demo-final/p.csv"]
    assert MADE_UP.splitlines()[predict.expected_line - 1] == "```text"
    assert MADE_UP.splitlines()[predict.line - 1] == "```bash"
    assert train.expected is None, "an output block after prose is not the command's output"
    assert demo.commands == ["make demo   # draws, trains", "make test"]
    assert predict.commands == ["python predict.py --run $RUN data/test --out p.csv   # the '#' in 'a#b' stays"]


def test_a_rule_takes_the_output_block_after_prose_and_shortens():
    rules = (rb.Rule(r"^make demo", "ends with", output="next", shown=r"^make demo", compare="tail"),
             rb.Rule(r"--save_dir cv$", "with --epoch 1", replace=((r"--epoch 15 ", "--epoch 1 "),), numbers=True))
    demo, setup, _, train = rb.parse_readme(MADE_UP, rules=rules)
    assert demo.expected == ["best epoch 6, threshold 0.387", "files in outs/demo-<time>/fold_A"]
    steps = rb.block_steps(demo, [], None)
    assert [(s.label, s.shown) for s in steps] == [("1", True), ("2", False)]
    steps = rb.block_steps(train, [setup], None)
    assert steps[0].label == "set-up" and "source .venv/bin/activate" in steps[0].shell
    assert steps[1].shell == "python main.py --epoch 1 --save_dir cv"


def test_strip_comment_keeps_quoted_hashes():
    assert rb.strip_comment("make demo   # a comment") == "make demo"
    assert rb.strip_comment("echo 'a # b' \"c#d\" e#f # g") == "echo 'a # b' \"c#d\" e#f"
    assert rb.strip_comment("# only a comment") == ""


def test_mask_hides_what_honest_runs_differ_in():
    line = "13:04:29 INFO exported outs/demo-20261207-130401/fold_A in 12.5 s (40 img/s), 8 min"
    assert rb.mask(line) == "<time> INFO exported outs/demo-<run>/fold_A in <timing> (<timing>), <timing>"
    assert rb.mask("files in outs/demo-final/fold_A") == rb.mask("files in outs/demo-<time>/fold_A")
    assert rb.mask("wrote /srv/x/clone/outs/a.csv", paths=("/srv/x/clone",)) == "wrote <clone>/outs/a.csv"
    assert rb.mask(f"log in {tempfile.gettempdir()}/abc/x.log.") == "log in <tmp>."
    # numbers: kept unless asked; names with digits keep theirs, signs and exponents go with the number
    assert rb.mask("roc_auc 0.9041 (150 images)") == "roc_auc 0.9041 (150 images)"
    assert (rb.mask("roc_auc 0.9041  f0_5 0.7253 in the large -0.47 (-0.84 to 2e-14) V00001.dcm", numbers=True)
            == "roc_auc <n> f0_5 <n> in the large <n> (<n> to <n>) V00001.dcm")


def test_printed_lines_are_what_a_console_shows():
    assert rb.printed_lines("a  \n\n\x1b[31mred\x1b[0m\nbar 10%\rbar 100%\n  \n") == ["a", "red", "bar 100%"]


def test_compare_every_line_or_the_tail():
    readme = ["best epoch 6, threshold 0.387", "files in outs/demo-<time>/fold_A"]
    ran = ["epoch 1 loss 0.5", "best epoch 6, threshold 0.387", "files in outs/demo-20261207-130401/fold_A"]
    assert rb.compare(readme, ran, "tail") == []
    diff = rb.compare(readme, ran, "all")
    assert diff[:2] == ["--- README", "+++ printed"] and "+epoch 1 loss 0.5" in diff
    other = ["best epoch 8, threshold 0.158", "files in outs/demo-20261207-130401/fold_A", "heatmap.png"]
    diff = rb.compare(readme, other, "tail")
    assert "-best epoch 6, threshold 0.387" in diff and "+best epoch 8, threshold 0.158" in diff
    assert "+heatmap.png" in diff, "a line printed after README's closing lines shows in the diff"
    assert rb.compare(readme, other[:2], "tail", numbers=True) == []
    assert rb.compare(readme, other[:2] + ["extra"], "tail", numbers=True) != []


def test_quick_shortens_every_training_and_leaves_out_the_suite():
    flags = "--data_dir $(DEMO_DATA) --epoch 15 --save_dir $(DEMO_RUN)"
    assert rb.quicken("make demo   # note", flags) == \
        "make demo DEMO_FLAGS='--data_dir $(DEMO_DATA) --epoch 1 --save_dir $(DEMO_RUN)'"
    assert rb.quicken("make test", flags).startswith(":")
    assert rb.quicken("python main.py --epoch 20 --save_dir a", flags) == "python main.py --epoch 1 --save_dir a"
    assert rb.quicken("python main.py --data_dir d  # no epoch", flags) == "python main.py --data_dir d --epoch 1"
    assert rb.quicken("python main.py --test --save_dir a", flags) == "python main.py --test --save_dir a"
    assert "--epoch" not in rb.demo_flags(ROOT / "Makefile").replace("--epoch 15", "")


def _run(block, blocks, tmp_path):
    setup = [b for b in blocks[:block.index - 1] if b.setup]
    steps = rb.block_steps(block, setup, None)
    logs = tmp_path / ".readme_blocks" / str(block.index)
    status, err = rb.run_steps(steps, tmp_path, logs, {"PATH": "/usr/bin:/bin"}, timeout=30)
    return rb.judge(block, steps, logs, status, err, 30, False, (str(tmp_path),))


SHELLS = """
```bash
GREETING=hello
```

```bash
echo "$GREETING at 12:00:01"
echo "wrote $PWD/out.txt" >&2
```
```text
hello at 09:30:00
wrote <clone>/out.txt
```

```bash
echo 'two' > a; echo 'three' > b
diff a b
echo after
```
```text
1c1
< two
---
> three
after
```

```bash
echo 'one'
```
```text
two
```

```bash
echo 'started'; exit 3
echo 'never'
```

```bash
ls no-such-file
echo 'never' > never
```

```bash
touch made-by-stand-in-only
cat raw/list.csv
```
```text
made up
```
"""


def test_blocks_run_in_fresh_shells_with_the_set_up_and_are_judged(tmp_path):
    rules = (rb.Rule(r"^diff a b", "diff's status 1 is its answer", ok=((r"^diff ", (0, 1)),)),
             rb.Rule(r"raw/list\.csv", "the reader's own file", stand_in=(("raw", ("mkdir raw",
                                                                                 "echo 'made up' > raw/list.csv")),)))
    blocks = rb.parse_readme(SHELLS, rules=rules)
    outcomes = [_run(b, blocks, tmp_path) for b in blocks]
    assert [o.status for o in outcomes] == ["PASS", "PASS", "PASS", "DIFF", "FAIL", "FAIL", "PASS"], outcomes
    assert "-two" in outcomes[3].detail and "+one" in outcomes[3].detail
    assert outcomes[4].note.startswith("exit 3 in 1: echo 'started'") and outcomes[4].detail == ["started"]
    assert outcomes[5].note == "exit 2 in 1: ls no-such-file" and "No such file" in outcomes[5].detail[0]
    assert not (tmp_path / "never").exists()
    # a stand-in is made only where its path is absent: a reader's own folder is used as it is
    (tmp_path / "raw" / "list.csv").write_text("mine\n")
    assert _run(blocks[6], blocks, tmp_path).status == "DIFF"


def test_a_block_past_its_time_is_ended_with_what_it_started(tmp_path):
    block = rb.parse_readme("```bash\nsleep 30 & echo $! > pid; wait\n```\n", rules=())[0]
    steps = rb.block_steps(block, [], None)
    status, _ = rb.run_steps(steps, tmp_path, tmp_path / "logs", {"PATH": "/usr/bin:/bin"}, timeout=1)
    assert status is None
    outcome = rb.judge(block, steps, tmp_path / "logs", status, "", 1, False, ())
    assert outcome.status == "FAIL" and outcome.note.startswith("timed out after 1 s")
    stat = Path(f"/proc/{int((tmp_path / 'pid').read_text())}/stat")
    time.sleep(0.2)
    assert not stat.exists() or stat.read_text().split()[2] == "Z", "the block's background sleep still runs"


def test_every_rule_is_for_one_block_of_readme():
    """A README edit that leaves a rule without its block (or gives it two) fails here, not in a long run."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = rb.parse_readme(text)
    for rule in rb.RULES:
        found = [b.index for b in blocks if b.rule is rule]
        assert len(found) == 1, f"rule {rule.match!r} is for blocks {found}"
        for pattern, _ in rule.replace:
            assert re.search(pattern, next(b for b in blocks if b.rule is rule).text, flags=re.M), pattern
    demo = blocks[0]
    assert demo.commands[0].startswith("make demo") and demo.expected[0].startswith("test set (")
