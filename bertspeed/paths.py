"""Where the files that are not Python modules live: the DeepSpeed configs, the launcher and shell
scripts, the example hostfile and the CUDA sources. In a source checkout they are its top-level
folders (ds_configs/, pretrain/, finetune/, data_prep/, kernels/); an installed wheel carries copies
under bertspeed/share/.

    bertspeed paths          # prints where they are
"""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
SHARE = PACKAGE / "share"
FOLDERS = ("ds_configs", "pretrain", "finetune", "data_prep", "kernels")


def share_root() -> Path:
    """The source checkout when running from one (or an editable install), else the wheel's copies."""
    return CHECKOUT if (CHECKOUT / "ds_configs").is_dir() and (CHECKOUT / "pretrain").is_dir() else SHARE


def folder(name: str) -> Path:
    if name not in FOLDERS:
        raise ValueError(f"unknown folder {name!r} (one of {', '.join(FOLDERS)})")
    return share_root() / name


def kernel_sources() -> Path:
    return folder("kernels") / "csrc"


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="bertspeed paths", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", choices=FOLDERS, help="print only this folder")
    args = parser.parse_args(argv)
    for name in [args.name] if args.name else FOLDERS:
        print(folder(name) if args.name else f"{name:<11} {folder(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
