"""benchmarks/bench_client.py: its versioned corpus is reproducible and its edits small."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import random
import sys
from pathlib import Path

from tests.support.scripts import REPO

# Imported rather than load_script()ed: load_script does not put the module in
# sys.modules, and the script's dataclasses need it there (with postponed annotations,
# dataclass looks the module up). benchmarks/ on the path also gives it its sibling
# harness.py, as when it is run.
sys.path.insert(0, str(REPO / "benchmarks"))
bench = importlib.import_module("bench_client")
MIB = 1024 * 1024


def digests(seed: int, versions: int = 6) -> list[list[str]]:
    return [[hashlib.sha256(d).hexdigest() for d in data]
            for data, _ in bench.corpus(seed, 2 * MIB, 3, versions)]


def test_the_corpus_is_reproducible_from_its_seed() -> None:
    first = digests(7)
    assert first == digests(7)
    assert first[0] != digests(8)[0]
    assert len(first) == 6 and all(len(v) == 3 for v in first)
    assert all(a != b for a, b in itertools.pairwise(first))  # each version edits


def common_ends(old: bytes, new: bytes) -> int:
    """Bytes shared at the start plus at the end of old and new."""
    n = min(len(old), len(new))
    head = next((i for i in range(n) if old[i] != new[i]), n)
    tail = next((i for i in range(n - head) if old[-1 - i] != new[-1 - i]), n - head)
    return head + tail


def test_each_version_differs_by_a_few_small_edits() -> None:
    previous: list[bytes] | None = None
    for data, edits in bench.corpus(3, 2 * MIB, 3, 8):
        current = [bytes(d) for d in data]
        if previous is None:
            assert edits == [] and sum(map(len, current)) == 2 * MIB
        else:
            low, high = bench.EDITS_PER_VERSION
            assert low <= len(edits) <= high
            assert all(0 < e.size <= bench.EDIT_MAX for e in edits)
            for i, (old, new) in enumerate(zip(previous, current, strict=True)):
                mine = [e for e in edits if e.file == i]
                # All a file's changes lie between its first and last edit: what differs
                # spans at most the edits' extent.
                if mine:
                    first = min(e.pos for e in mine)
                    span = max(e.pos for e in mine) + sum(e.size for e in mine) - first
                    assert common_ends(old, new) >= len(old) - span - sum(
                        e.size for e in mine)
                else:
                    assert old == new
        previous = current


def test_only_the_edited_files_are_rewritten(tmp_path: Path) -> None:
    versions = bench.corpus(5, MIB, 4, 3)
    data, edits = next(versions)
    bench.write_version(tmp_path, data, edits)
    names = bench.file_names(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    before = {n: (tmp_path / n).stat().st_mtime_ns for n in names}
    for p in tmp_path.iterdir():  # mark: a rewritten file gets new content back
        p.write_bytes(b"x")
    data, edits = next(versions)
    bench.write_version(tmp_path, data, edits)
    touched = {names[e.file] for e in edits}
    for i, n in enumerate(names):
        assert ((tmp_path / n).read_bytes() == bytes(data[i])) == (n in touched)
    assert before  # every file existed after version 0


def test_edits_stay_inside_their_file() -> None:
    rng = random.Random(1)
    for _ in range(200):
        sizes = [rng.randint(1, 20_000) for _ in range(3)]
        data = [bytearray(s) for s in sizes]
        for edit in bench.plan_edits(rng, list(sizes)):
            assert 0 <= edit.pos < max(1, len(data[edit.file]))
            bench.apply_edit(data[edit.file], edit, rng)
