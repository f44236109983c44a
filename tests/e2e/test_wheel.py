"""The wheel is the product: built from the checkout, installed into a fresh virtual environment
outside it, and ``xmargin demo --accounts 20`` runs there, compiling the Vyper sources that the
wheel carries as package data.

The default test gives the fresh environment this environment's third-party packages through a
``.pth`` path entry (``.pth`` files inside that folder are not processed, so this environment's
editable install of xmargin is not visible) and installs the wheel with ``--no-deps``; it checks
that every project package is imported from the fresh environment. The ``slow`` test installs the
wheel with its dependencies resolved by pip, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "protocol_model", "bot", "devnode", "simulator", "cli")


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XMARGIN_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _build_wheel(out: Path) -> Path:
    out.mkdir()
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], cwd=out)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("xmargin-*.whl")
    return wheel


def _fresh_venv(path: Path, borrow_site_packages: bool) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    if borrow_site_packages:
        purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path)
        site = Path(purelib.stdout.strip())
        ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (site / "_xmargin_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def _check_install(tmp_path: Path, borrow_site_packages: bool) -> None:
    wheel = _build_wheel(tmp_path / "dist")
    python = _fresh_venv(tmp_path / "venv", borrow_site_packages)
    install = [str(python), "-m", "pip", "install", "-q", str(wheel)]
    done = _run(install + (["--no-deps"] if borrow_site_packages else []), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    script = f"import json, importlib; print(json.dumps({{p: importlib.import_module(p).__file__ for p in {PACKAGES!r}}}))"
    where = _run([str(python), "-c", script], cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    venv_dir = (tmp_path / "venv").resolve()
    for package, file in json.loads(where.stdout).items():
        assert Path(file).resolve().is_relative_to(venv_dir), f"{package} imported from {file}"
    assert (Path(json.loads(where.stdout)["contracts"]).parent / "MarginEngine.vy").is_file()

    demo = _run([str(tmp_path / "venv" / "bin" / "xmargin"), "demo", "--accounts", "20", "--json"], cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-2000:]
    summary = json.loads(demo.stdout)
    assert summary["accounts"] == 20
    assert not list(tmp_path.glob("*.json")), "the demo wrote files into the working directory"


def test_wheel_installs_outside_the_checkout_and_runs_the_demo(tmp_path: Path) -> None:
    _check_install(tmp_path, borrow_site_packages=True)


@pytest.mark.slow
def test_wheel_installs_with_its_dependencies(tmp_path: Path) -> None:
    _check_install(tmp_path, borrow_site_packages=False)
