"""Packaging: one top-level name (`bertspeed`), installable beside a cluster's torch and Hugging Face's
`kernels` package, with a `bertspeed` command whose every subcommand answers --help, and the user-facing
files (DeepSpeed configs, launcher and shell scripts, hostfile example, CUDA sources) inside the wheel."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from bertspeed.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HF_KERNELS = "kernels==0.19.1"  # Hugging Face's package, which transformers imports when present


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


HELP_ALL = ("import contextlib, io, sys\nfrom bertspeed.cli import COMMANDS, main\n"
            "for name in COMMANDS:\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            "        main([name, '--help'])\n"
            "    assert 'usage:' in out.getvalue(), name\n"
            "    print(name)\n")


def test_every_command_answers_help():
    """In one process (each command's --help exits 0 with its usage)."""
    assert run([sys.executable, "-c", HELP_ALL], cwd=ROOT).stdout.split() == list(COMMANDS)


def test_command_list_and_launcher_argument():
    listing = run([sys.executable, "-m", "bertspeed", "--help"]).stdout
    assert all(f"  {name} " in listing for name in COMMANDS)
    # The deepspeed launcher puts --local_rank=N before the subcommand, which receives it.
    done = run([sys.executable, "-m", "bertspeed", "--local_rank=0", "glue", "--help"])
    assert "--local_rank" in done.stdout
    assert Path(run([sys.executable, "-m", "bertspeed", "paths", "ds_configs"]).stdout.strip()) == ROOT / "ds_configs"


def test_no_top_level_folder_is_a_package():
    """Only bertspeed/ is importable from the repository root; the others hold scripts and sources."""
    for folder in ("pretrain", "finetune", "data_prep", "kernels", "ds_configs", "bench", "tests"):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_every_subpackage_is_packaged():
    config = (ROOT / "pyproject.toml").read_text()
    for init in (ROOT / "bertspeed").rglob("__init__.py"):
        name = ".".join(init.parent.relative_to(ROOT).parts)
        assert f'"{name}"' in config, f"{name} is missing from [tool.setuptools] packages"


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv with `pip install .` (not editable) and Hugging Face's `kernels`. The heavy dependencies
    (torch, DeepSpeed, transformers) come from the test venv through a .pth line, so nothing is downloaded
    twice; a stub `torch 2.9.0+cu124` distribution stands for a cluster's CUDA torch."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])  # pip and setuptools come from the test venv
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    stub = site / "torch-2.9.0+cu124.dist-info"
    stub.mkdir()
    (stub / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.9.0+cu124\n")
    (stub / "INSTALLER").write_text("test\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "-q", "--disable-pip-version-check"]
    report = venv.parent / "report.json"
    run([*pip, "install", "--dry-run", "--no-build-isolation", "--report", report, ROOT])
    wheel_dir = venv.parent / "wheel"
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheel_dir, ROOT])
    run([*pip, "install", "--no-deps", next(wheel_dir.glob("*.whl"))])
    run([*pip, "install", "--no-deps", HF_KERNELS])
    return venv, json.loads(report.read_text()), next(wheel_dir.glob("*.whl"))


@pytest.mark.slow
def test_install_keeps_the_present_torch(fresh_venv):
    _, report, _ = fresh_venv
    installing = {item["metadata"]["name"]: item["metadata"]["version"] for item in report["install"]}
    assert list(installing) == ["bertspeed"], installing  # torch 2.9.0+cu124 (and the rest) already satisfy it


@pytest.mark.slow
def test_wheel_holds_one_top_level_name_and_the_user_facing_files(fresh_venv):
    _, _, wheel = fresh_venv
    names = zipfile.ZipFile(wheel).namelist()
    name, version = wheel.name.split("-")[:2]  # a platform wheel since data prep's C module
    assert {n.split("/")[0] for n in names} == {"bertspeed", f"{name}-{version}.dist-info"}
    for module in ("bertspeed/data_prep/_wordpiece.", "bertspeed/pretrain/_lamb_cpu."):
        assert any(n.startswith(module) and n.endswith(".so") for n in names), module
    share = "bertspeed/share/"
    for path in ("ds_configs/bert_large_phase1_zero2_fp16.json", "pretrain/run_pretraining.py",
                 "pretrain/run_phase1.sh", "pretrain/hostfile.example", "finetune/run_squad.py",
                 "finetune/run_glue.sh", "data_prep/create_datasets.sh", "kernels/csrc/launchers.cu"):
        assert share + path in names, path


@pytest.mark.slow
@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_transformers_and_hf_kernels_import_beside_us(fresh_venv, where, tmp_path):
    venv, _, _ = fresh_venv
    code = ("import kernels, transformers, bertspeed, bertspeed.kernels, bertspeed.model; "
            "from transformers import BertModel; "
            "print(kernels.__file__); print(bertspeed.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = run([venv / "bin" / "python", "-c", code], cwd=ROOT if where == "repo_root" else tmp_path, env=env)
    hf_kernels, ours = done.stdout.split()
    assert str(venv) in hf_kernels  # Hugging Face's package, not our kernels/ folder
    if where == "elsewhere":
        assert str(venv) in ours  # the installed wheel


@pytest.mark.slow
def test_installed_command_and_paths(fresh_venv, tmp_path):
    venv, _, _ = fresh_venv
    command = venv / "bin" / "bertspeed"
    assert "usage:" in run([command, "pretrain", "--help"], cwd=tmp_path).stdout  # the console script
    assert run([venv / "bin" / "python", "-c", HELP_ALL], cwd=tmp_path).stdout.split() == list(COMMANDS)
    folders = dict(line.split(maxsplit=1) for line in run([command, "paths"], cwd=tmp_path).stdout.splitlines())
    assert all(str(venv) in path for path in folders.values())
    assert (Path(folders["ds_configs"]) / "cpu_tiny_zero0_fp32.json").is_file()
    assert (Path(folders["pretrain"]) / "hostfile.example").is_file()
    launcher_script = Path(folders["pretrain"]) / "run_pretraining.py"
    assert "usage:" in run([venv / "bin" / "python", launcher_script, "--help"], cwd=tmp_path).stdout


def readme_programs() -> set[tuple[str, ...]]:
    """The program part of every command in the README's bash blocks: `bertspeed SUB`, `python -m MOD`,
    `python SCRIPT.py`, `bash SCRIPT.sh`, or the script a `deepspeed` line launches."""
    text = (ROOT / "README.md").read_text()
    programs = set()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\$\(bertspeed paths (\w+)\)", r"\1", line)  # the checkout's folder
            words = [w for w in line.split("#")[0].split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            if not words or words[0] in ("make", "pip", "cd", "export", "cat") or words[0].startswith("node-"):
                continue  # set-up, or the example hostfile's content
            if words[0] == "bertspeed":
                programs.add(("bertspeed",) + tuple(w for w in words[1:2] if not w.startswith("-")))
            elif words[0] == "deepspeed":
                programs.add(("python", next(w for w in words if w.endswith(".py"))))
            elif words[:2] == ["python", "-m"]:
                programs.add(tuple(words[:3]))
            elif words[0] in ("python", "bash"):
                programs.add(tuple(words[:2]))
            else:
                raise AssertionError(f"README command not understood by this test: {line}")
    return programs


def test_every_readme_command_answers_help():
    programs = readme_programs()
    assert ("bash", "data_prep/create_datasets.sh") in programs and ("python", "pretrain/run_pretraining.py") in programs
    for program in sorted(programs):
        if program[0] == "bertspeed":
            assert len(program) == 1 or program[1] in COMMANDS, program  # each one's --help: test above
            continue
        head = {"python": [sys.executable], "bash": ["bash"]}[program[0]]
        done = subprocess.run([*head, *program[1:], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and ("usage" in done.stdout.lower()), f"{program}: {done.stderr[-1500:]}"
