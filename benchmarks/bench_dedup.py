"""Dedup on a deterministic versioned corpus: stored bytes vs logical bytes.

The corpus is a base file and a series of edited versions (inserts, deletes,
overwrites, an append), all generated from a fixed seed. For each chunker the
stored bytes are the unique chunks' bytes, exactly what the chunk service
keeps (it dedups on the same chunker). Next to it, when `restic` is on PATH,
restic's repository size on the same corpus (compression off, so the two
measure the same thing).

    python benchmarks/bench_dedup.py [--base-mib 64] [--versions 12]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from dfms.chunker import make_chunker

MIB = 1024 * 1024
SEED = 20261121


def corpus(base_mib: int, versions: int) -> list[bytes]:
    rng = random.Random(SEED)
    current = bytearray(rng.randbytes(base_mib * MIB))
    out = [bytes(current)]
    for v in range(1, versions):
        for _ in range(rng.randint(1, 4)):
            edit = rng.choice(("insert", "delete", "overwrite"))
            pos = rng.randrange(len(current))
            size = rng.randint(1, 64 * 1024)
            if edit == "insert":
                current[pos:pos] = rng.randbytes(size)
            elif edit == "delete":
                del current[pos:pos + size]
            else:
                current[pos:pos + size] = rng.randbytes(min(size, len(current) - pos))
        if v % 4 == 0:
            current += rng.randbytes(rng.randint(1, 2 * MIB))  # a log-like append
        out.append(bytes(current))
    return out


def stored_bytes(versions: list[bytes], algorithm: str) -> tuple[int, int]:
    chunker = make_chunker(algorithm)
    unique: dict[bytes, int] = {}
    count = 0
    for data in versions:
        for offset, length in chunker.cut(data):
            count += 1
            unique.setdefault(hashlib.sha256(data[offset:offset + length]).digest(), length)
    return sum(unique.values()), count


def restic_bytes(versions: list[bytes]) -> int | None:
    if shutil.which("restic") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        repo, src = Path(tmp) / "repo", Path(tmp) / "src"
        src.mkdir()
        env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}
        run = {"env": env, "check": True, "capture_output": True}
        subprocess.run(["restic", "init", "--repository-version", "2"], **run)  # type: ignore[call-overload]
        for i, data in enumerate(versions):
            (src / "file.bin").write_bytes(data)
            subprocess.run(["restic", "backup", "--compression", "off", "--host", "bench",
                            "--tag", f"v{i}", str(src)], **run)  # type: ignore[call-overload]
        data_dir = repo / "data"
        return sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-mib", type=int, default=64)
    parser.add_argument("--versions", type=int, default=12)
    args = parser.parse_args()
    versions = corpus(args.base_mib, args.versions)
    logical = sum(len(v) for v in versions)
    print(f"corpus: {len(versions)} versions, {logical / MIB:.1f} MiB logical "
          f"(seed {SEED})")
    print(f"{'store':<22}{'stored MiB':>12}{'ratio':>9}{'chunks':>9}")
    for algorithm in ("fastcdc", "rabin"):
        stored, count = stored_bytes(versions, algorithm)
        print(f"{'dfms ' + algorithm:<22}{stored / MIB:12.1f}{logical / stored:9.2f}{count:9d}")
    restic = restic_bytes(versions)
    if restic is None:
        print("restic: not installed (apt-get install restic) - no comparison")
    else:
        print(f"{'restic (data packs)':<22}{restic / MIB:12.1f}{logical / restic:9.2f}")


if __name__ == "__main__":
    main()
