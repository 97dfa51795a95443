"""The user CLI against restic on a versioned corpus, and the re-put of unchanged files
(issue 16's benchmarks), in one run on one cluster.

1. A versioned corpus, reproducible from ``--seed``: a base of ``--base-mib`` MiB of
   pseudo-random data in ``--files`` files, then ``--versions`` versions in all, each
   after a few small edits (inserts, overwrites, deletes of at most 8 KiB at random
   places of random files). The files live in one local directory that is edited in
   place, as a user's would be. After each version, the same directory is pushed with
   `dfms put` (the real CLI as a subprocess, every file of the directory, logged in as a
   fresh user) and with `restic backup` to a restic repository in a bucket of its own on
   one of the cluster's S3 nodes. The two alternate, so drift on the machine falls on
   both alike.
   Figures per tool: seconds per version and in all (wall time of the command), bytes
   sent (DFMS: the CLI's ``bytes_sent``; restic: its summary's ``data_added``), bytes
   stored (DFMS: the physical bytes of this user's chunks, from the database, divided by
   n -- one copy; restic: the repository's objects in its bucket, every file).
2. Re-put of an unchanged set of ``--unchanged-gib`` GiB (files of 256 MiB): put once,
   then the local read speed of the same files (``cat`` to /dev/null) and the re-put,
   in logical MB/s (10^6 bytes). The files were just written, so both read from the page
   cache, alike.

Goals (the script exits with status 1 when one is not met):

    dfms put speed / restic backup speed, all versions, at n=3        >= 2
    bytes stored, DFMS (one copy) / restic                            <= 1.05
    re-put of unchanged files, MB/s          >= 500 (or the read speed, if slower)

    python benchmarks/bench_client.py [--base-mib 256] [--versions 8] [--files 4]
                                      [--unchanged-gib 5] [--data-dir D]

Needs restic (Debian: ``apt-get install -y restic``). Run it alone: the CLI, restic and
the cluster share the machine's two cores. A quick try: ``--base-mib 16 --versions 3
--unchanged-gib 0.1`` (a smoke, not a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from harness import DATA_DIR_HELP, run_on_cluster
from miniopy_async.api import Minio
from miniopy_async.deleteobjects import DeleteObject

from dfms.localstack.handle import ClusterHandle

MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000
SEED = 20261202
EDIT_MAX = 8 * 1024  # "a few KiB" per edit
EDITS_PER_VERSION = (2, 6)
UNCHANGED_FILE_BYTES = 256 * MIB
SPEED_GOAL = 2.0  # dfms put at n=3 >= 2x restic's speed
STORED_GOAL = 1.05  # DFMS stored (one copy) within 5% of restic
UNCHANGED_GOAL_MB_S = 500.0
REMOTE = "/bench-client"
DFMS = Path(sys.executable).with_name("dfms")
RESTIC_MISSING = ("restic is not installed: on Debian `apt-get install -y restic` "
                  "(the comparison needs it)")
REPLICAS_SETTLE_S = 60.0


# --- the corpus -------------------------------------------------------------------------

@dataclass(frozen=True)
class Edit:
    kind: str  # insert | overwrite | delete
    file: int
    pos: int
    size: int


def base_files(rng: random.Random, total: int, files: int) -> list[bytearray]:
    """``total`` bytes of pseudo-random data in ``files`` files of (nearly) equal size."""
    sizes = [total // files + (1 if i < total % files else 0) for i in range(files)]
    return [bytearray(rng.randbytes(size)) for size in sizes]


def plan_edits(rng: random.Random, sizes: list[int]) -> list[Edit]:
    edits = []
    for _ in range(rng.randint(*EDITS_PER_VERSION)):
        f = rng.randrange(len(sizes))
        kind = rng.choice(("insert", "overwrite", "delete"))
        size = rng.randint(1, EDIT_MAX)
        pos = rng.randrange(max(1, sizes[f] - size))
        if kind == "insert":
            sizes[f] += size
        elif kind == "delete":
            sizes[f] -= min(size, sizes[f] - pos)
        edits.append(Edit(kind, f, pos, size))
    return edits


def apply_edit(data: bytearray, edit: Edit, rng: random.Random) -> None:
    end = edit.pos + edit.size
    if edit.kind == "insert":
        data[edit.pos:edit.pos] = rng.randbytes(edit.size)
    elif edit.kind == "delete":
        del data[edit.pos:end]
    else:
        data[edit.pos:end] = rng.randbytes(len(data[edit.pos:end]))


def corpus(seed: int, total: int, files: int, versions: int
           ) -> Iterator[tuple[list[bytearray], list[Edit]]]:
    """Version 0 (no edits), then each next version and the edits that made it. The files
    are edited in place: copy them to keep a version."""
    rng = random.Random(seed)
    data = base_files(rng, total, files)
    yield data, []
    for _ in range(1, versions):
        edits = plan_edits(rng, [len(d) for d in data])
        for edit in edits:
            apply_edit(data[edit.file], edit, rng)
        yield data, edits


def file_names(files: int) -> list[str]:
    return [f"part-{i:02d}.bin" for i in range(files)]


def write_version(work: Path, data: list[bytearray], edits: list[Edit]) -> None:
    """Write the files the edits touched (all of them for version 0): the others keep
    their mtime, as on a user's disk."""
    touched = {e.file for e in edits} if edits else set(range(len(data)))
    for i, name in enumerate(file_names(len(data))):
        if i in touched:
            (work / name).write_bytes(data[i])


# --- running the tools -----------------------------------------------------------------

@dataclass
class Run:
    seconds: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    stored: int = 0

    @property
    def total_s(self) -> float:
        return sum(self.seconds)


def timed(cmd: list[str], env: dict[str, str], stdin: str | None = None
          ) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}{done.stdout[-2000:]}")
    return seconds, done.stdout


@dataclass
class DfmsUser:
    env: dict[str, str]
    user_id: str

    def put(self, paths: list[Path]) -> tuple[float, dict[str, Any]]:
        seconds, out = timed([str(DFMS), "put", "--json", "-q", *map(str, paths), REMOTE],
                             self.env)
        return seconds, json.loads(out)


async def dfms_user(cluster: ClusterHandle, tmp: Path) -> DfmsUser:
    """A fresh user registered through the API, logged in with the CLI in a config dir
    of its own."""
    email, password = f"bench-client-{os.urandom(4).hex()}@example.com", os.urandom(12).hex()
    async with aiohttp.ClientSession() as http, http.post(
            f"{cluster.gateway_url}/api/v1/auth/register",
            json={"email": email, "password": password, "display_name": "bench"}) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise SystemExit(f"register: {resp.status} {body}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    env |= {"XDG_CONFIG_HOME": str(tmp / "config"), "XDG_CACHE_HOME": str(tmp / "cache")}
    timed([str(DFMS), "login", cluster.gateway_url, "--email", email, "--password-stdin"],
          env, stdin=password + "\n")
    return DfmsUser(env, str(body["user"]["id"]))


@dataclass
class Restic:
    env: dict[str, str]
    minio: Minio
    bucket: str

    def backup(self, work: Path) -> tuple[float, dict[str, Any]]:
        seconds, out = timed(["restic", "backup", "--json", "--host", "bench", str(work)],
                             self.env)
        summary = [json.loads(line) for line in out.splitlines()
                   if '"message_type":"summary"' in line.replace(" ", "")]
        return seconds, summary[-1]

    async def stored(self) -> int:
        return sum([int(obj.size or 0) async for obj in
                    self.minio.list_objects(self.bucket, recursive=True)])

    async def drop(self) -> None:
        try:
            names = [DeleteObject(str(o.object_name)) async for o in
                     self.minio.list_objects(self.bucket, recursive=True)]
            if errors := await self.minio.remove_objects(self.bucket, names):
                raise SystemExit(f"restic bucket {self.bucket}: not deleted: {errors[:3]}")
            await self.minio.remove_bucket(self.bucket)
        finally:
            await self.minio.close_session()


async def restic_repo(cluster: ClusterHandle, tmp: Path) -> Restic:
    """A repository in a new bucket on the cluster's first S3 node."""
    s3 = cluster.config.s3
    endpoint = str(cluster.s3_nodes[0]["endpoint"])
    bucket = f"restic-bench-{os.urandom(4).hex()}"
    minio = Minio(endpoint.split("://", 1)[1], access_key=s3.access_key,
                  secret_key=s3.secret_key, secure=False, region=s3.region)
    await minio.make_bucket(bucket)
    # restic (Go) fails on the CA bundle variable this machine sets; the node is plain HTTP.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env |= {"RESTIC_REPOSITORY": f"s3:{endpoint}/{bucket}", "RESTIC_PASSWORD": "bench",
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "RESTIC_CACHE_DIR": str(tmp / "restic-cache")}
    timed(["restic", "init"], env)
    return Restic(env, minio, bucket)


async def dfms_stored(cluster: ClusterHandle, user_id: str) -> tuple[int, int, int]:
    """(unique bytes, physical bytes / n, n) of the chunks this user's versions use. The
    last replica may be written after the commit (write quorum < n): wait for it."""
    n = cluster.config.replication.replicas_n
    query = """
        SELECT coalesce(sum(c.size), 0)::bigint,
               coalesce(sum(c.size * (SELECT count(*) FROM chunk_replicas r
                   WHERE r.chunk_sha256 = c.sha256 AND r.state = 'ok')), 0)::bigint
        FROM chunks c WHERE c.sha256 IN (
            SELECT me.chunk_sha256 FROM files f
            JOIN file_versions fv ON fv.file_id = f.id
            JOIN manifest_entries me ON me.manifest_id = fv.manifest_id
            WHERE f.owner_id = $1)"""
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        deadline = time.monotonic() + REPLICAS_SETTLE_S
        while True:
            row = await conn.fetchrow(query, user_id)
            unique, physical = (row[0], row[1]) if row else (0, 0)
            if physical >= unique * n or time.monotonic() > deadline:
                return int(unique), int(physical) // n, n
            await asyncio.sleep(1.0)
    finally:
        await conn.close()


# --- part 1: the versioned corpus -------------------------------------------------------

@dataclass
class Versions:
    logical: list[int] = field(default_factory=list)  # bytes of each version's files
    edits: list[int] = field(default_factory=list)
    dfms: Run = field(default_factory=Run)
    restic: Run = field(default_factory=Run)
    dfms_unique: int = 0
    n: int = 0


async def push_versions(args: argparse.Namespace, user: DfmsUser, restic: Restic,
                        cluster: ClusterHandle, work: Path) -> Versions:
    out = Versions()
    paths = [work / name for name in file_names(args.files)]
    for v, (data, edits) in enumerate(corpus(args.seed, args.base_mib * MIB, args.files,
                                             args.versions)):
        write_version(work, data, edits)
        out.logical.append(sum(len(d) for d in data))
        out.edits.append(len(edits))
        seconds, put = user.put(paths)
        out.dfms.seconds.append(seconds)
        out.dfms.sent.append(int(put["bytes_sent"]))
        seconds, summary = restic.backup(work)
        out.restic.seconds.append(seconds)
        out.restic.sent.append(int(summary["data_added"]))
        print(f"version {v}: dfms {out.dfms.seconds[-1]:.1f} s, restic {seconds:.1f} s",
              flush=True)
    out.dfms_unique, out.dfms.stored, out.n = await dfms_stored(cluster, user.user_id)
    out.restic.stored = await restic.stored()
    return out


def version_table(res: Versions) -> None:
    print(f"\n{'version':>7}{'edits':>6}{'MiB':>9}{'dfms s':>9}{'dfms sent':>13}"
          f"{'restic s':>10}{'restic added':>14}")
    for v, logical in enumerate(res.logical):
        print(f"{v:>7}{res.edits[v]:>6}{logical / MIB:9.1f}{res.dfms.seconds[v]:9.2f}"
              f"{res.dfms.sent[v]:13,}{res.restic.seconds[v]:10.2f}{res.restic.sent[v]:14,}")
    print(f"{'all':>7}{sum(res.edits):>6}{sum(res.logical) / MIB:9.1f}{res.dfms.total_s:9.2f}"
          f"{sum(res.dfms.sent):13,}{res.restic.total_s:10.2f}{sum(res.restic.sent):14,}")


def versions_verdict(res: Versions) -> bool:
    """Print the totals and ratios; whether both goals are met."""
    version_table(res)
    speed = res.restic.total_s / res.dfms.total_s
    edits_only = sum(res.restic.seconds[1:]) / max(sum(res.dfms.seconds[1:]), 1e-9)
    stored = res.dfms.stored / res.restic.stored
    print(f"\nstored: DFMS {res.dfms.stored:,} B (physical / n={res.n}; unique chunks "
          f"{res.dfms_unique:,} B), restic {res.restic.stored:,} B (repository)")
    print(f"{'ratio':<46}{'value':>8}  goal")
    rows = [("dfms put speed / restic, all versions", speed, f">= {SPEED_GOAL:g}",
             speed >= SPEED_GOAL),
            ("dfms put speed / restic, versions 1.. only", edits_only, "(shown)", True),
            ("bytes stored DFMS / restic", stored, f"<= {STORED_GOAL:g}",
             stored <= STORED_GOAL)]
    for label, value, goal, ok in rows:
        print(f"{label:<46}{value:8.3f}  {goal}{'' if ok else '  NOT MET'}")
    return all(ok for *_, ok in rows)


# --- part 2: unchanged files ------------------------------------------------------------

def write_unchanged(where: Path, total: int, seed: int) -> list[Path]:
    where.mkdir()
    rng, left = random.Random(seed + 1), total
    paths: list[Path] = []
    while left > 0:
        size = min(UNCHANGED_FILE_BYTES, left)
        path = where / f"clip-{len(paths):03d}.bin"
        with path.open("wb") as f:
            for off in range(0, size, 16 * MIB):  # never more than 16 MiB in memory
                f.write(rng.randbytes(min(16 * MIB, size - off)))
        paths.append(path)
        left -= size
    return paths


def unchanged_verdict(args: argparse.Namespace, user: DfmsUser, work: Path) -> bool:
    total = int(args.unchanged_gib * GIB)
    paths = write_unchanged(work / "unchanged", total, args.seed)
    first_s, first = user.put(paths)
    read_s, _ = timed(["sh", "-c", 'cat "$@" > /dev/null', "cat", *map(str, paths)],
                      user.env)
    again_s, again = user.put(paths)
    rate, read_rate = total / MB / again_s, total / MB / read_s
    goal = min(UNCHANGED_GOAL_MB_S, read_rate)
    print(f"\nunchanged set: {len(paths)} files, {total / GIB:.2f} GiB")
    print(f"{'step':<28}{'s':>8}{'MB/s':>9}{'sent B':>15}")
    print(f"{'first put':<28}{first_s:8.2f}{total / MB / first_s:9.1f}"
          f"{first['bytes_sent']:15,}")
    print(f"{'local read (cat)':<28}{read_s:8.2f}{read_rate:9.1f}{'':>15}")
    print(f"{'re-put, unchanged':<28}{again_s:8.2f}{rate:9.1f}{again['bytes_sent']:15,}")
    ok = rate >= goal
    print(f"re-put {rate:.1f} MB/s, goal >= {goal:.1f} MB/s (500, or the read speed if "
          f"slower){'' if ok else '  NOT MET'}")
    return ok


# --- main -------------------------------------------------------------------------------

async def bench(cluster: ClusterHandle, args: argparse.Namespace, tmp: Path) -> bool:
    user = await dfms_user(cluster, tmp)
    restic = await restic_repo(cluster, tmp)
    work = tmp / "corpus"
    work.mkdir()
    print(f"corpus: {args.base_mib} MiB in {args.files} files, {args.versions} versions "
          f"(seed {args.seed}); restic {restic.env['RESTIC_REPOSITORY']}", flush=True)
    try:
        res = await push_versions(args, user, restic, cluster, work)
    finally:
        await restic.drop()
    ok = versions_verdict(res)
    if args.unchanged_gib > 0:
        ok = unchanged_verdict(args, user, tmp) and ok
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-mib", type=int, default=256)
    parser.add_argument("--versions", type=int, default=8)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--unchanged-gib", type=float, default=5.0)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit(RESTIC_MISSING)
    results: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="dfms-bench-client-") as tmp:

        async def run(cluster: ClusterHandle) -> None:
            results.append(await bench(cluster, args, Path(tmp)))

        run_on_cluster(run, args.data_dir, prefix="dfms-bench-client-")
    if not all(results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
