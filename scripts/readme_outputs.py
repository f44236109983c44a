"""Regenerate the command outputs shown in README.md from real runs, so that they cannot drift.

Every output in the README sits between two markers, its commands on ``$ `` lines (a trailing
backslash continues a command on the next line)::

    <!-- output NAME -->            (or <!-- output NAME volatile -->)
    ```console
    $ xmargin seed --accounts 25 --seed 7
    seeded 25 traders (seed 7); 3 leveraged 8x or more
    ```
    <!-- /output -->

The script runs the commands of every block, in README order, each as its own process
(``python -m cli``, what the ``xmargin`` script runs) in one scratch folder, and writes what they
print (stdout and stderr, as a terminal shows them) back under each command. ``xmargin node`` is
started in the background on a free port and stays up for the blocks after it (the other commands
reach it through ``XMARGIN_RPC_URL``, but for ``simulate``, which seeds its own population); its port is shown as the default 8545. Two normalisations,
both of presentation only: the ``HH:MM:SS`` time at the start of a log line is dropped, and trailing
spaces are removed.

A block marked ``volatile`` prints something that differs from run to run (a wall-clock duration,
a fresh random key, the timing of a race): it is regenerated but not compared by ``--check``, and
a block that is compared must not depend on one (``--check`` skips the volatile ones).

    python scripts/readme_outputs.py              # rewrite README.md from real runs
    python scripts/readme_outputs.py --skip-volatile   # rewrite only the blocks --check compares
    python scripts/readme_outputs.py --check      # exit 1 if a compared block differs (no rewrite)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- output (?P<name>[\w-]+)(?P<volatile> volatile)? -->\n```console\n(?P<body>.*?)```\n<!-- /output -->",
                   re.S)
LOG_TIME = re.compile(r"^\d\d:\d\d:\d\d (?=(DEBUG|INFO|WARNING|ERROR)\b)", re.M)
SHOWN_PORT = 8545
COMMAND_TIMEOUT_S = 600


@dataclass
class Block:
    name: str
    volatile: bool
    commands: list[str]
    raw: list[str]       # each command as the README writes it (its $ line and continuation lines)
    start: int
    end: int


def parse(text: str) -> list[Block]:
    blocks = []
    for m in BLOCK.finditer(text):
        commands: list[str] = []
        raw: list[str] = []
        pending, lines = "", ""
        for line in m.group("body").splitlines():
            if pending:
                pending += " " + line.strip()
            elif line.startswith("$ "):
                pending = line[2:].strip()
            else:
                continue
            lines += line + "\n"
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
            else:
                commands.append(pending)
                raw.append(lines)
                pending, lines = "", ""
        blocks.append(Block(m.group("name"), bool(m.group("volatile")), commands, raw, m.start("body"), m.end("body")))
    return blocks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Runner:
    """Runs README commands in one scratch folder; ``xmargin node`` in the background."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.node: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("XMARGIN_")}
        self.env.update({"COLUMNS": "160", "PYTHONPATH": str(ROOT), "NO_COLOR": "1"})

    def run(self, command: str) -> str:
        argv = shlex.split(command)
        if argv[0] != "xmargin":
            raise SystemExit(f"README command does not start with xmargin: {command}")
        if argv[1:2] == ["node"]:
            return self._start_node(argv[2:])
        env = dict(self.env)
        if argv[1:2] == ["simulate"]:
            env.pop("XMARGIN_RPC_URL", None)   # simulations seed their own population, not the node's
        proc = subprocess.run([sys.executable, "-m", "cli", *argv[1:]], cwd=self.folder, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT_S)
        return self._clean(proc.stdout)

    def _start_node(self, args: list[str]) -> str:
        if self.node is not None:
            raise SystemExit("the README starts a second node")
        self.port = _free_port()
        self.node = subprocess.Popen([sys.executable, "-m", "cli", "node", *args, "--port", str(self.port)],
                                     cwd=self.folder, env=self.env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        assert self.node.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        for line in self.node.stdout:
            lines.append(line)
            if line.startswith("listening on ") or time.monotonic() > deadline:
                break
        self.env["XMARGIN_RPC_URL"] = f"http://127.0.0.1:{self.port}"
        return self._clean("".join(lines))

    def _clean(self, out: str) -> str:
        if self.port is not None:
            out = out.replace(f"127.0.0.1:{self.port}", f"127.0.0.1:{SHOWN_PORT}")
        out = LOG_TIME.sub("", out)
        return "".join(line.rstrip() + "\n" for line in out.splitlines())

    def close(self) -> None:
        if self.node is not None:
            self.node.send_signal(signal.SIGINT)   # as Ctrl-C in its terminal
            try:
                self.node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.node.kill()
            self.node = None


def regenerate(text: str, *, skip_volatile: bool) -> tuple[str, dict[str, tuple[str, str]]]:
    """The README with every block's output regenerated, and ``{name: (old body, new body)}``."""
    blocks = parse(text)
    out, pos, bodies = [], 0, {}
    with tempfile.TemporaryDirectory(prefix="xmargin-readme-") as folder:
        runner = Runner(Path(folder))
        try:
            for b in blocks:
                old = text[b.start:b.end]
                if b.volatile and skip_volatile:
                    new = old
                else:
                    new = "".join(raw + runner.run(c) + ("\n" if i < len(b.commands) - 1 else "")
                                  for i, (c, raw) in enumerate(zip(b.commands, b.raw)))
                    print(f"ran {b.name}{' (volatile)' if b.volatile else ''}", file=sys.stderr)
                out.append(text[pos:b.start] + new)
                pos = b.end
                bodies[b.name] = (old, new)
        finally:
            runner.close()
    out.append(text[pos:])
    return "".join(out), bodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the non-volatile blocks, rewrite nothing")
    parser.add_argument("--skip-volatile", action="store_true", help="rewrite only the non-volatile blocks (quick)")
    args = parser.parse_args(argv)
    text = README.read_text()
    new, bodies = regenerate(text, skip_volatile=args.check or args.skip_volatile)
    if args.check:
        stale = [name for name, (old, body) in bodies.items() if old != body]
        for name in stale:
            print(f"README block {name!r} differs from a real run: run python scripts/readme_outputs.py",
                  file=sys.stderr)
        return 1 if stale else 0
    README.write_text(new)
    print(f"rewrote {len(bodies)} block(s) of {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
