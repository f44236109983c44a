"""How long the default test run takes, in figures that mean something on a shared machine.

    python bench/test_time.py                        # the README's `.venv/bin/pytest` (pyproject addopts)
    python bench/test_time.py -- -m slow             # anything after -- goes to pytest
    python bench/test_time.py --baseline-estimator   # the same run with py-evm's own gas estimator

Wall time alone says little when other jobs share the cores, so the table also shows the load
average before and after, the CPU seconds of the whole run (pytest, its workers and every process
they started and waited for), each worker's CPU seconds, and the summed per-test durations
(setup + call + teardown, from JUnit XML; on busy cores they stretch with the load). On 2 idle
cores the run takes about its busiest worker's CPU seconds plus the time tests spend waiting
(sleeps, polls, subprocess start-ups), so "busiest worker" is a lower bound for that wall time.
The ten scopes with the largest summed durations (tests/conftest.py, ``scope_of``) follow.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = '''
import json, os, resource
def pytest_sessionfinish(session):
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    with open(os.path.join(os.environ["TEST_TIME_DIR"], worker + ".json"), "w") as f:
        json.dump({"worker": worker, "cpu": cpu}, f)
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-estimator", action="store_true",
                    help="py-evm's default gas estimator instead of devnode.gas (tests/conftest.py)")
    ap.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = ap.parse_args(argv)
    python = ROOT / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="test-time-") as tmp:
        out = Path(tmp)
        (out / "test_time_plugin.py").write_text(PLUGIN)
        env = dict(os.environ, TEST_TIME_DIR=tmp, PYTHONPATH=os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])))
        if args.baseline_estimator:
            env["GAS_ESTIMATOR_BACKEND_FUNC"] = "eth.estimators.gas.binary_gas_search_intrinsic_tolerance"
        cmd = [str(python if python.exists() else sys.executable), "-m", "pytest", "-q", "-p", "test_time_plugin",
               f"--junitxml={out / 'junit.xml'}", *args.pytest_args]
        load_before = os.getloadavg()
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        load_after = os.getloadavg()
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = kids.ru_utime + kids.ru_stime
        workers = {}
        for f in out.glob("*.json"):
            w = json.loads(f.read_text())
            workers[w["worker"]] = w["cpu"]
        workers.pop("main", None)
        summed, scopes = 0.0, Counter()
        sys.path[:0] = [str(ROOT), str(ROOT / "tests")]   # not bench/contracts
        from conftest import scope_of   # the scopes the workers take

        if (out / "junit.xml").exists():
            for case in ET.parse(out / "junit.xml").iter("testcase"):
                seconds = float(case.get("time", 0))
                summed += seconds
                module = case.get("classname", "").replace(".", "/") + ".py"
                scopes[scope_of(f"{module}::{case.get('name', '')}")] += seconds
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(f"pytest {' '.join(args.pytest_args) or '(pyproject addopts)'}"
          f"{' with py-evm gas estimator' if args.baseline_estimator else ''}: exit {done.returncode}, {summary}")
    print(f"{'wall (s)':>9} {'load before':>12} {'load after':>11} {'CPU (s)':>8} {'busiest worker CPU (s)':>23} "
          f"{'summed durations (s)':>21}")
    busiest = max(workers.values()) if workers else cpu
    print(f"{wall:>9.0f} {load_before[0]:>12.2f} {load_after[0]:>11.2f} {cpu:>8.0f} {busiest:>23.0f} {summed:>21.0f}")
    if workers:
        print("workers' CPU (s): " + ", ".join(f"{w} {c:.0f}" for w, c in sorted(workers.items())))
    print("largest scopes, summed durations (s):")
    for scope, seconds in scopes.most_common(10):
        print(f"  {seconds:7.0f}  {scope}")
    if done.returncode not in (0,):
        print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
