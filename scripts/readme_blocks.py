"""python scripts/readme_blocks.py [--list | --dry-run] [--only N ...] [--workdir DIR] [--venv DIR] [--quick]

README's ```bash blocks run in order on a fresh clone, as a new reader pastes them, and what they print
compared with the output README shows for them: the ```text, ```csv or plain ``` block that follows a
```bash block with nothing but blank lines between (README's convention for "the command's output").

- The clone: ``git clone`` of this checkout's HEAD into a new temporary folder (uncommitted changes are
  not in it), or into --workdir. An existing --workdir is used as it is, so ``--only`` can go on where an
  earlier call stopped (after ``make demo``, say).
- Each block runs in a fresh ``bash -c`` in the clone, its commands one after the other; the first one
  that fails ends the block. A block that only sets the shell up (``source ...``, ``RUN=...``) is run
  again before every later block, as in the one shell a reader pastes into.
- The virtual environment is not installed again (6 GB): the clone's ``.venv/`` links to the entries of
  --venv (default: this checkout's .venv) beside a Makefile stamp of its own, so ``make demo`` finds it
  installed and nothing is written into the shared environment.
- RULES (below) are the blocks README itself says are run or shown otherwise: a shortened training, an
  output from another run, the end of a console only, the reader's own files (stand-ins are generated),
  a viewer that serves until Ctrl-C. Each rule quotes README's words.
- Compared: the printed lines (stdout and stderr together, as the console shows them; blank lines
  dropped) with clock times, demo run folders (``demo-<date>``, README's ``demo-final``), temporary paths
  and timings masked. Where README's numbers come from another or a shortened run, every number is
  masked too (the lines' words must still match). --quick shortens every training to one epoch and
  leaves out ``make test``, for a trial of the script itself; it masks every number.

Each block ends PASS, DIFF (a unified diff of the masked lines), FAIL (the exit status and the output's
tail) or SKIP (why); the exit status is 1 when a block is DIFF or FAIL. Every command's output is kept in
``<clone>/.readme_blocks/<block>/``.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hipx.core.cli import UserError, run_main  # noqa: E402


@dataclass(frozen=True)
class Rule:
    """How one README block is run or compared where README says it differs from a plain paste."""

    match: str  # regex searched (multi-line) in the block's text: the block this rule is for
    why: str  # README's words that call for it
    replace: tuple[tuple[str, str], ...] = ()  # (regex, replacement) on the block's text before it runs
    stand_in: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (path, commands making it where it is absent)
    output: str = "after"  # "after": README's output block directly follows; "next": the next one, after prose
    shown: str = ""  # regex of the commands whose output README shows ("": every command's)
    compare: str = "all"  # "all" the lines; "tail": README's lines end the output
    numbers: bool = False  # README's numbers are another run's or a shortened run's: every number masked
    ok: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (regex of a command, exit statuses meaning success)
    skip: str = ""  # a reason not to run the block


RULES: tuple[Rule, ...] = (
    Rule(r"^make demo", 'Quick start: "`make demo` ... draws two heatmap sheets of its test images and ends with:" '
         "(the output block after that sentence; make test's output is not shown)",
         output="next", shown=r"^make demo", compare="tail"),
    Rule(r"^tensorboard --logdir", 'Watch: "open its run group in the viewer": the viewer serves until Ctrl-C; '
         "it gets one (SIGINT) after 20 s (status 124); README shows no output for it",
         replace=((r"^tensorboard ", "timeout -s INT 20 tensorboard "),),
         ok=((r"^timeout -s INT 20 tensorboard ", (0, 124)),)),
)

OUTPUT_LANGS = ("", "text", "csv", "console")
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SETUP = re.compile(r"^(?:source|\.|export)\s|^[A-Za-z_]\w*=")  # a command that only sets the shell up


@dataclass
class Block:
    """One ```bash block of README and the printed lines README shows for it."""

    index: int  # 1-based, in README's order of ```bash blocks
    line: int  # README's line of its opening fence
    text: str  # as written
    expected: list[str] | None = None  # README's printed lines for it; None: README prints none
    expected_line: int | None = None
    next_output: tuple[list[str], int] | None = None  # the next output block before another ```bash one
    rule: Rule | None = None

    @property
    def commands(self) -> list[str]:
        return commands(self.text)

    @property
    def setup(self) -> bool:
        """Only sets the shell up: re-run before every later block."""
        cmds = self.commands
        return bool(cmds) and all(SETUP.match(c) for c in cmds)


@dataclass
class Step:
    """One thing the block's shell runs, with its own log."""

    label: str
    shell: str
    ok: tuple[int, ...] = (0,)
    shown: bool = False


@dataclass
class Outcome:
    status: str  # PASS, DIFF, FAIL, SKIP
    note: str = ""
    detail: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading README


def parse_readme(text: str, rules: tuple[Rule, ...] = RULES) -> list[Block]:
    """README's ```bash blocks in order, each with the output block directly after it and its rule."""
    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    fences = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    blocks = []
    for i, (lang, body, start, end) in enumerate(fences):
        if lang != "bash":
            continue
        block = Block(len(blocks) + 1, line_of(start), body)
        for other_lang, other_body, other_start, _ in fences[i + 1:]:
            if other_lang == "bash":
                break
            if other_lang in OUTPUT_LANGS:
                block.next_output = (other_body.splitlines(), line_of(other_start))
                if not text[end:other_start].strip():
                    block.expected, block.expected_line = block.next_output[0], block.next_output[1]
                break
        block.rule = next((r for r in rules if re.search(r.match, body, flags=re.M)), None)
        if block.rule and block.rule.output == "next" and block.next_output:
            block.expected, block.expected_line = block.next_output
        blocks.append(block)
    return blocks


def commands(text: str) -> list[str]:
    """A block's commands as the shell reads them: continuation lines joined, blank and comment lines out."""
    joined = re.sub(r"[ \t]*\\\n[ \t]*", " ", text)
    return [line.strip() for line in joined.splitlines() if strip_comment(line)]


def strip_comment(command: str) -> str:
    """The command without its ``# comment`` (a ``#`` that starts a word outside quotes)."""
    quote = ""
    for i, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].strip()
    return command.strip()


# ---------------------------------------------------------------- comparing


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLOCK = re.compile(r"\b\d{1,2}:\d{2}:\d{2}\b")
RUN_FOLDER = re.compile(r"\bdemo-[\w<>-]+")  # demo-20261205-131500, README's demo-final, demo-<time>
TIMING = re.compile(r"\b\d+(?:\.\d+)?\s?(?:img/s|ms|s|min|h)\b")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w)")


def printed_lines(text: str) -> list[str]:
    """What a console shows of ``text``: the last state of each line rewritten with \\r, colours out,
    trailing spaces out, blank lines dropped."""
    lines = (ANSI.sub("", line.split("\r")[-1]).rstrip() for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def mask(line: str, numbers: bool = False, paths: tuple[str, ...] = ()) -> str:
    """``line`` with what differs between two honest runs replaced by a placeholder: clock times, demo run
    folders, the given paths (the clone), temporary paths and timings; with ``numbers``, every number
    too and runs of spaces (aligned columns widen with their numbers)."""
    for path in paths:
        line = line.replace(path, "<clone>")
    line = re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s'\",:;)\]]*[^\s'\",:;)\].]", "<tmp>", line)
    line = CLOCK.sub("<time>", line)
    line = RUN_FOLDER.sub("demo-<run>", line)
    line = TIMING.sub("<timing>", line)
    if numbers:
        line = re.sub(r"[ \t]+", " ", NUMBER.sub("<n>", line))
    return line


def compare(expected: list[str], printed: list[str], mode: str = "all", numbers: bool = False,
            paths: tuple[str, ...] = ()) -> list[str]:
    """[] when README's ``expected`` lines are what was ``printed`` (``mode`` "all": every line; "tail":
    its last lines), after masking; otherwise a unified diff of README's lines against the printed part
    that matches them best."""
    want = [mask(line, numbers, paths) for line in printed_lines("\n".join(expected))]
    got = [mask(line, numbers, paths) for line in printed]
    window = got if mode == "all" else got[-len(want):] if want else []
    if window == want:
        return []
    if mode == "tail":
        window = _tail_window(want, got)
    return list(difflib.unified_diff(want, window, "README", "printed", n=1, lineterm=""))


def _tail_window(want: list[str], got: list[str]) -> list[str]:
    """The end of ``got`` from where README's first matching line sits (the last len(want) lines when
    none matches), so a diff shows the missing and the extra closing lines."""
    matcher = difflib.SequenceMatcher(None, want, got, autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size]
    start = max(0, blocks[0].b - blocks[0].a) if blocks else max(0, len(got) - len(want))
    return got[start:]


# ---------------------------------------------------------------- running


def block_steps(block: Block, setup: list[Block], quick_flags: str | None) -> list[Step]:
    """What the block's shell runs: the set-up blocks before it, stand-ins for the reader's own files
    (each only where its path is absent), then its commands after the rule's replacements."""
    rule = block.rule or Rule("", "")
    steps = [Step("set-up", "\n".join(b.text.strip() for b in setup))] if setup else []
    for path, made_by in rule.stand_in:
        body = "\n".join(["set -e", *made_by])
        steps.append(Step(f"stand-in {path}", f"[ -e {shlex.quote(path)} ] || (\n{body}\n)"))
    text = block.text
    for pattern, replacement in rule.replace:
        text = re.sub(pattern, replacement, text, flags=re.M)
    for number, command in enumerate(commands(text), 1):
        if quick_flags is not None:
            command = quicken(command, quick_flags)
        ok = next((codes for pattern, codes in rule.ok if re.search(pattern, command)), (0,))
        shown = not rule.shown or bool(re.search(rule.shown, command))
        steps.append(Step(str(number), command, ok, shown))
    return steps


def quicken(command: str, demo_flags: str) -> str:
    """--quick: every training one epoch (the demo through DEMO_FLAGS), ``make test`` left out."""
    if re.match(r"make test\b", command):
        return ": make test left out by --quick"
    if re.match(r"make demo\b", command):
        return f"make demo DEMO_FLAGS={shlex.quote(re.sub(r'--epoch [0-9]+', '--epoch 1', demo_flags))}"
    command = re.sub(r"--epoch [0-9]+", "--epoch 1", command)
    if re.match(r"python (main|pretrain)\.py\b", command) and "--epoch" not in command and "--test" not in command:
        command = f"{strip_comment(command)} --epoch 1"
    return command


def shell_script(steps: list[Step], logs: Path) -> str:
    """One bash script: each step's output (stdout and stderr, in order) into its own log, its exit
    status into a file; a status the step does not accept ends the script with it."""
    parts = []
    for i, step in enumerate(steps):
        log, status = (shlex.quote(str(logs / f"{i:02d}.{kind}")) for kind in ("log", "status"))
        accepted = " ".join(str(code) for code in step.ok)
        parts.append(f"{{ {step.shell}\n}} > {log} 2>&1\n__rb_status=$?\necho $__rb_status > {status}\n"
                     f'case " {accepted} " in *" $__rb_status "*) ;; *) exit $__rb_status ;; esac')
    return "\n".join(parts + ["exit 0\n"])


def _as_in_a_terminal() -> None:
    """The blocks' shell gets Ctrl-C and Ctrl-\\ as a terminal delivers them, also when this script runs in the
    background of a non-interactive shell, which would hand its children SIGINT and SIGQUIT ignored (the
    viewer's block is stopped with SIGINT; the tests' Ctrl-C checks send it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def run_steps(steps: list[Step], clone: Path, logs: Path, env: dict, timeout: float) -> tuple[int | None, str]:
    """Run the steps in a fresh ``bash -c`` in the clone; (bash's exit status or None on time-out, its
    own stderr). The shell and what it started form one process group, ended as one on a time-out."""
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.iterdir():
        old.unlink()
    proc = subprocess.Popen(["bash", "-c", shell_script(steps, logs)], cwd=clone, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=_as_in_a_terminal)
    try:
        out, err = proc.communicate(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate()
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None, ""
    return proc.returncode, (out + err).strip()


def judge(block: Block, steps: list[Step], logs: Path, status: int | None, shell_err: str, timeout: float,
          numbers: bool, paths: tuple[str, ...]) -> Outcome:
    """The block's outcome from its steps' logs and statuses."""
    rule = block.rule or Rule("", "")
    texts = [(logs / f"{i:02d}.log").read_text(errors="replace") if (logs / f"{i:02d}.log").exists() else ""
             for i in range(len(steps))]
    if status != 0:
        # the step that failed: the last to record a status it does not accept, else the one after it (which
        # ended the shell itself, with `exit`, or ran out of time)
        done = [i for i in range(len(steps)) if (logs / f"{i:02d}.status").exists()]
        last = done[-1] if done else 0
        if done and (logs / f"{last:02d}.status").read_text().strip() in {str(code) for code in steps[last].ok}:
            last = min(last + 1, len(steps) - 1)
        head = f"timed out after {timeout:g} s" if status is None else f"exit {status}"
        tail = printed_lines(texts[last])[-8:] + printed_lines(shell_err)[-4:]
        return Outcome("FAIL", f"{head} in {steps[last].label}: {steps[last].shell[:100]}", tail)
    if block.expected is None:
        return Outcome("PASS", "exit 0; README prints no output for it")
    printed = [line for text, step in zip(texts, steps) if step.shown for line in printed_lines(text)]
    diff = compare(block.expected, printed, rule.compare, numbers or rule.numbers, paths)
    how = ("numbers masked, " if numbers or rule.numbers else "") + (
        "README's lines end the output" if rule.compare == "tail" else "every line")
    if not diff:
        return Outcome("PASS", f"{len(block.expected)} lines as README:{block.expected_line} ({how})")
    more = [f"... {len(diff) - 40} more diff lines"] if len(diff) > 40 else []
    return Outcome("DIFF", f"against README:{block.expected_line} ({how})", diff[:40] + more)


# ---------------------------------------------------------------- the clone


def make_clone(workdir: Path | None, venv: Path) -> Path:
    """A fresh clone of this checkout's HEAD (in ``workdir`` when given and new), its .venv linked to
    ``venv``; an existing ``workdir`` as it is."""
    if workdir is not None and workdir.exists():
        if not (workdir / ".git").exists():
            raise UserError(f"--workdir {workdir} exists and is no clone; give a new folder or an earlier clone")
        link_venv(workdir, venv)
        return workdir.resolve()
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "-uno"], capture_output=True,
                      text=True).stdout.strip():
        print(f"note: uncommitted changes in {ROOT} are not in the clone", file=sys.stderr)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    clone = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="readme-blocks-"))
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head], check=True)
    link_venv(clone, venv)
    return clone.resolve()


def link_venv(clone: Path, venv: Path) -> None:
    """``clone/.venv``: a folder of links to ``venv``'s entries and the Makefile's stamp for the clone's
    requirements.txt, so make installs nothing and never writes into ``venv``. Kept if present."""
    target = clone / ".venv"
    if target.exists() or target.is_symlink():
        return
    if not (venv / "bin" / "python").exists():
        raise UserError(f"--venv {venv}: no bin/python there; give a virtual environment with "
                        "requirements.txt installed")
    target.mkdir()
    for entry in venv.iterdir():
        if not entry.name.startswith(".installed-"):
            (target / entry.name).symlink_to(entry)
    checksum = subprocess.run(["cksum", "requirements.txt"], cwd=clone, capture_output=True, text=True,
                              check=True).stdout.split()[0]
    (target / f".installed-{checksum}").touch()  # the Makefile's STAMP, newer than requirements.txt


def shell_env(venv: Path) -> dict:
    """The environment of a fresh shell: no virtual environment active, Python's output unbuffered (so
    printed and logged lines keep their order in the log)."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    bins = {(venv / "bin").resolve(), (ROOT / ".venv" / "bin").resolve()}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() not in bins)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the blocks, their first command and output; run none")
    p.add_argument("--dry-run", action="store_true", help="print what each block's shell would run; run none")
    p.add_argument("--only", type=int, nargs="+", metavar="N", help="run these blocks (numbers as --list shows)")
    p.add_argument("--workdir", type=Path, help="clone into this new folder, or go on in this earlier clone")
    p.add_argument("--venv", type=Path, default=(ROOT / ".venv").resolve(),
                   help="the installed virtual environment the clone's .venv links to (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="every training one epoch, make test left out, "
                   "every number masked: a trial of this script, not of README")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per block (default: %(default)g)")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md", help=argparse.SUPPRESS)
    return p


def list_blocks(blocks: list[Block]) -> None:
    for block in blocks:
        cmds = block.commands
        if block.setup:
            output = "set-up for later blocks"
        elif block.expected is None:
            output = "no output shown"
        else:
            output = f"{len(block.expected)} lines at README:{block.expected_line}"
        more = f"  (+{len(cmds) - 1} more)" if len(cmds) > 1 else ""
        print(f"{block.index:>2}  README:{block.line:<4} {output:<28} {strip_comment(cmds[0])[:90]}{more}")
        if block.rule:
            print(f"{'':36}rule: {block.rule.why}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    blocks = parse_readme(args.readme.read_text(encoding="utf-8"))
    wanted = args.only or [b.index for b in blocks]
    bad = [n for n in wanted if not 1 <= n <= len(blocks)]
    if bad:
        raise UserError(f"--only {bad[0]}: README has {len(blocks)} bash blocks, numbered 1 to {len(blocks)}")
    if args.list:
        list_blocks(blocks)
        return 0
    quick_flags = demo_flags(ROOT / "Makefile") if args.quick else None
    if args.dry_run:
        for block in blocks:
            if block.index in wanted:
                print(f"--- block {block.index} (README:{block.line})")
                for step in block_steps(block, [b for b in blocks[:block.index - 1] if b.setup], quick_flags):
                    print(f"[{step.label}{'' if step.ok == (0,) else f', status {step.ok} accepted'}"
                          f"{', shown' if step.shown and block.expected else ''}] {step.shell}")
        return 0
    clone = make_clone(args.workdir, args.venv.resolve())
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"clone {clone} at {head.stdout.strip()}")
    return run_blocks(blocks, wanted, clone, args)


def run_blocks(blocks: list[Block], wanted: list[int], clone: Path, args: argparse.Namespace) -> int:
    """Run the wanted blocks in README's order, print each outcome as it ends and a summary line."""
    env, counts = shell_env(args.venv.resolve()), {"PASS": 0, "DIFF": 0, "FAIL": 0, "SKIP": 0}
    quick_flags = demo_flags(clone / "Makefile") if args.quick else None
    for block in blocks:
        if block.index not in wanted:
            continue
        started = time.monotonic()
        if block.rule and block.rule.skip:
            outcome = Outcome("SKIP", block.rule.skip)
        else:
            steps = block_steps(block, [b for b in blocks[:block.index - 1] if b.setup], quick_flags)
            logs = clone / ".readme_blocks" / f"{block.index:02d}"
            status, err = run_steps(steps, clone, logs, env, args.timeout)
            outcome = judge(block, steps, logs, status, err, args.timeout, args.quick, (str(clone),))
        counts[outcome.status] += 1
        first = strip_comment(block.commands[0])[:70]
        print(f"[{block.index:>2}] {outcome.status:<4} {first}  ({time.monotonic() - started:.0f} s)")
        for line in ([outcome.note] if outcome.note else []) + outcome.detail:
            print(f"       {line}")
        sys.stdout.flush()
    quick = " (--quick: a trial of the script, not of README)" if args.quick else ""
    print("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(wanted)} blocks{quick}; "
          f"logs in {clone}/.readme_blocks")
    return 1 if counts["DIFF"] or counts["FAIL"] else 0


def demo_flags(makefile: Path) -> str:
    """The Makefile's DEMO_FLAGS, for --quick to shorten."""
    found = re.search(r"^DEMO_FLAGS \?= (.*)$", makefile.read_text(encoding="utf-8"), flags=re.M)
    if not found:
        raise UserError(f"{makefile}: no 'DEMO_FLAGS ?= ...' line for --quick to shorten")
    return found.group(1).strip()


if __name__ == "__main__":
    run_main(lambda argv: sys.exit(main(argv)))
