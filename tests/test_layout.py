"""The package's shape, checked from the source: the import direction between bertspeed's packages, no
DeepSpeed in the model package, and no block of lines copied between pretraining and finetuning."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bertspeed"
# package -> the bertspeed packages it may import
ALLOWED = {
    "training": set(), "kernels": {"paths"}, "model": {"kernels", "training"},
    "data_prep": {"model", "training"}, "pretrain": {"data_prep", "model", "training", "paths", "convert"},
    "finetune": {"model", "training"}, "preflight": {"kernels", "model", "pretrain", "training"},
}
MIN_BLOCK = 6  # lines


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_packages_import_only_downwards():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in (PACKAGE / package).rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] == "bertspeed" and len(parts) > 1 and parts[1] not in allowed | {package}:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_model_package_never_imports_deepspeed():
    for path in (PACKAGE / "model").rglob("*.py"):
        assert not any(m.split(".")[0] == "deepspeed" for m in imported_modules(path)), path


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, whitespace-normalised text) of the lines that carry code: no blanks, comments,
    docstring-only or bracket-only lines, imports."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = " ".join(line.split())
        if not text or text.startswith(("#", "import ", "from ")) or re.fullmatch(r"[\])}(\[{,:\"']*", text):
            continue
        out.append((number, text))
    return out


def test_no_block_copied_between_pretraining_and_finetuning():
    windows = defaultdict(list)
    for side in ("pretrain", "finetune"):
        for path in sorted((PACKAGE / side).rglob("*.py")):
            lines = code_lines(path)
            for i in range(len(lines) - MIN_BLOCK + 1):
                block = tuple(text for _, text in lines[i:i + MIN_BLOCK])
                windows[block].append((side, f"{path.relative_to(ROOT)}:{lines[i][0]}"))
    shared = [places for places in windows.values() if len({side for side, _ in places}) > 1]
    assert not shared, "copied blocks:\n" + "\n".join(" = ".join(w for _, w in places) for places in shared)


def test_script_folders_hold_no_module_named_like_a_distribution():
    """Running `python bench/x.py` or `python pretrain/x.py` puts that folder first on sys.path: no file
    there may be named like a module another distribution provides (transformers looks for `kernels`)."""
    generic = {"kernels", "bert", "data_prep", "pretrain", "finetune", "tokenizers", "datasets", "utils", "export"}
    for folder in ("bench", "finetune", "data_prep", "kernels"):
        stems = {p.stem for p in (ROOT / folder).glob("*.py")}
        assert not stems & generic, f"{folder}/: {sorted(stems & generic)}"
