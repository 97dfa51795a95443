"""Searching a user's files and folders by name (asyncpg, caller's connection).

Names are compared in a folded form: accents removed, then lowercased, all in SQL
(``dfms_search_fold``, migration 0007), for names and queries alike.

**What matches.** The query is split on whitespace into tokens. Tokens made only of
letters and digits are *words*; any other token (``100%``, ``a_c``, ``report.pdf``,
``c++``) is a *literal*: punctuation typed by the user is meant, so a literal must occur
in the name as is (``%`` and ``_`` are plain characters, never wildcards). A name
matches when

1. it contains the whole query as a substring, or
2. it contains every literal, and every word matches the name: the name is split into
   words on any character that is not a letter or digit (``quarterly_report-2024.pdf``
   is ``quarterly`` ``report`` ``2024`` ``pdf``), and a query word matches when it
   begins one of them (full text, prefix: ``quar`` finds ``quarterly``), or when it is
   *trigram word-similar* to some part of the name, by at least
   ``similarity_threshold`` (typos: ``reprot`` finds ``report``, ``quartrly``
   ``quarterly``). Each word on its own: a misspelt word must still resemble a word
   of the name, and one good word does not carry a query of unrelated ones.

Names are matched through stored generated columns, ``search_name`` (the folded name)
and ``search_tsv`` (its words), each with a partial GIN index on live rows (trigram:
LIKE substrings and word similarity; tsvector: full text), so a query only visits
candidate rows. Trashed rows (``deleted_at IS NOT NULL``) never match.

**Ranking.** With ``n`` the folded name, ``q`` the folded query and ``w`` its words::

    score = 3   if n = q                               (exact name)
          + 2   if n <> q and n without its extension = q   ("report" -> report.pdf)
          + 1   if n starts with q                      (prefix)
          + 0.5 if n contains q                         (substring)
          + 4 * ts_rank(words of n, full-text query)    (0 unless it matches; ~0.06/word)
          + word_similarity(w, n)                       (0..1, best-matching part of n)
          + similarity(q, n)                            (0..1, the whole name: closer
                                                         and shorter names first)

Ties are broken by name, then kind and id, so pages are stable.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dfms.metadata.db import Connection
from dfms.metadata.namespace import FileRow, FolderRow

MAX_QUERY_CHARS = 200
KINDS = ("file", "folder")


class InvalidQuery(ValueError):
    """The search text cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Query:
    text: str                  # NFC, whitespace runs collapsed to one space
    words: tuple[str, ...]     # the tokens of letters and digits only, each once
    literals: tuple[str, ...]  # every other token

    @classmethod
    def parse(cls, raw: str) -> Query:
        text = unicodedata.normalize("NFC", raw).strip()
        if not text:
            raise InvalidQuery("'q' must not be empty")
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidQuery(f"'q' must be at most {MAX_QUERY_CHARS} characters")
        tokens = text.split()
        if any(unicodedata.category(c) in ("Cc", "Cs") for token in tokens for c in token):
            raise InvalidQuery("'q' must not contain control characters")
        words = tuple(dict.fromkeys(t for t in tokens if t.isalnum()))
        literals = tuple(dict.fromkeys(t for t in tokens if not t.isalnum()))
        return cls(" ".join(tokens), words, literals)


@dataclass(frozen=True, slots=True)
class Filters:
    kinds: Collection[str] = KINDS
    min_size: int | None = None      # bytes; files only (folders are left out)
    max_size: int | None = None
    after: datetime | None = None    # updated_at >= after
    before: datetime | None = None   # updated_at < before
    folder_id: uuid.UUID | None = None  # only below this folder (the caller checked it)

    @property
    def sized(self) -> bool:
        return self.min_size is not None or self.max_size is not None


@dataclass(frozen=True, slots=True)
class Hit:
    item: FileRow | FolderRow
    score: float
    path: str  # of the folder holding the item: "/" for the root, else "/docs/reports"


class _Args:
    """Positional query parameters: each call binds a value and returns its $n."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _match(alias: str, p_text: str, p_words: list[str], p_literals: list[str]) -> str:
    """The match condition on ``alias``: on its indexed generated columns ``search_name``
    (the folded name) and ``search_tsv`` (its words), see migration 0007."""
    name = f"{alias}.search_name"
    whole = f"{name} LIKE dfms_search_contains({p_text})"
    parts = [f"{name} LIKE dfms_search_contains({p})" for p in p_literals]
    parts += [f"({alias}.search_tsv @@ dfms_search_query({p}) OR {name} %> dfms_search_fold({p}))"
              for p in p_words]
    return f"({whole} OR ({' AND '.join(parts)}))"


_SCORE = """
      3.0 * (h.folded = k.qf)::int
    + 2.0 * (starts_with(h.folded, k.qf || '.')
             AND strpos(substr(h.folded, length(k.qf) + 2), '.') = 0)::int
    + 1.0 * starts_with(h.folded, k.qf)::int
    + 0.5 * (strpos(h.folded, k.qf) > 0)::int
    + 4.0 * CASE WHEN h.tsv @@ k.tq THEN ts_rank(h.tsv, k.tq) ELSE 0 END
    + CASE WHEN k.wf <> '' THEN word_similarity(k.wf, h.folded) ELSE 0 END
    + similarity(k.qf, h.folded)
"""

_FILE_HITS = """
    SELECT 'file' AS kind, f.id, f.name, f.folder_id AS parent_id, f.created_at,
           f.updated_at, f.current_version, f.search_name AS folded, f.search_tsv AS tsv
    FROM files f
"""

_FOLDER_HITS = """
    SELECT 'folder' AS kind, d.id, d.name, d.parent_id, d.created_at, d.updated_at,
           NULL::integer AS current_version, d.search_name AS folded, d.search_tsv AS tsv
    FROM folders d
"""

# Versions and manifests are joined for the page only, not for every hit; and every
# row carries the total, the LEFT JOIN giving one row (of NULLs but the total) when
# the page is empty.
_SELECT_PAGE = """
SELECT t.total, p.kind, p.id, p.name, p.parent_id, p.created_at, p.updated_at, p.score,
       v.version, v.mime_type, v.manifest_id, m.size, m.sha256, m.chunk_count,
       COALESCE(pa.path, '/') AS path
FROM (SELECT count(*) AS total FROM hits) t
LEFT JOIN page p ON true
LEFT JOIN file_versions v ON v.file_id = p.id AND v.version = p.current_version
LEFT JOIN manifests m ON m.id = v.manifest_id
LEFT JOIN paths pa ON pa.start = p.parent_id
ORDER BY p.score DESC, p.name, p.kind, p.id
"""


def build_sql(owner: uuid.UUID, query: Query, filters: Filters, *, limit: int,
              offset: int) -> tuple[str, list[Any]]:
    """The one statement of a search: the page of hits, best first, with their folder
    paths and the total number of hits."""
    arg = _Args()
    p_owner = arg(owner)
    p_text = arg(query.text)
    p_all_words = arg(" ".join(query.words))
    p_words = [arg(word) for word in query.words]
    p_literals = [arg(lit) for lit in query.literals]
    ctes: list[str] = []
    if filters.folder_id is not None:
        p_root = arg(filters.folder_id)
        ctes.append(f"""
    scope AS (  -- the folder and every live folder below it
        SELECT id FROM folders WHERE id = {p_root} AND owner_id = {p_owner}
            AND deleted_at IS NULL
        UNION ALL
        SELECT c.id FROM folders c JOIN scope s ON c.parent_id = s.id
        WHERE c.owner_id = {p_owner} AND c.deleted_at IS NULL
    )""")

    def conditions(alias: str, parent: str) -> list[str]:
        conds = [f"{alias}.owner_id = {p_owner}", f"{alias}.deleted_at IS NULL",
                 _match(alias, p_text, p_words, p_literals)]
        if filters.after is not None:
            conds.append(f"{alias}.updated_at >= {arg(filters.after)}")
        if filters.before is not None:
            conds.append(f"{alias}.updated_at < {arg(filters.before)}")
        if filters.folder_id is not None:
            conds.append(f"{alias}.{parent} IN (SELECT id FROM scope)")
        return conds

    branches = []
    if "file" in filters.kinds:
        conds = [*conditions("f", "folder_id"), "f.current_version IS NOT NULL"]
        if filters.sized:
            sizes = []
            if filters.min_size is not None:
                sizes.append(f"m.size >= {arg(filters.min_size)}")
            if filters.max_size is not None:
                sizes.append(f"m.size <= {arg(filters.max_size)}")
            conds.append("EXISTS (SELECT 1 FROM file_versions v"
                         " JOIN manifests m ON m.id = v.manifest_id"
                         " WHERE v.file_id = f.id AND v.version = f.current_version"
                         f" AND {' AND '.join(sizes)})")
        branches.append(_FILE_HITS + "    WHERE " + "\n      AND ".join(conds))
    if "folder" in filters.kinds and not filters.sized:  # folders have no size
        branches.append(_FOLDER_HITS + "    WHERE "
                        + "\n      AND ".join(conditions("d", "parent_id")))
    if not branches:  # folders only, yet filtered by size: nothing (still binding every $n)
        branches.append(_FOLDER_HITS + "    WHERE false AND "
                        + _match("d", p_text, p_words, p_literals))
    p_limit, p_offset = arg(limit), arg(offset)
    ctes.append(f"""
    hits AS MATERIALIZED ({"    UNION ALL".join(branches)}
    ),
    page AS (
        SELECT h.kind, h.id, h.name, h.parent_id, h.created_at, h.updated_at,
               h.current_version, ({_SCORE})::float8 AS score
        FROM hits h,
             (SELECT dfms_search_fold({p_text}) AS qf, dfms_search_query({p_all_words}) AS tq,
                     dfms_search_fold({p_all_words}) AS wf) k
        ORDER BY score DESC, h.name, h.kind, h.id
        LIMIT {p_limit} OFFSET {p_offset}
    ),
    up AS (  -- from the folder holding each item of the page up to the root
        SELECT d.id AS start, d.parent_id, d.name, 0 AS depth
        FROM folders d WHERE d.id IN (SELECT parent_id FROM page)
        UNION ALL
        SELECT up.start, d.parent_id, d.name, up.depth + 1
        FROM up JOIN folders d ON d.id = up.parent_id
        WHERE up.depth < 1000
    ),
    paths AS (
        SELECT start, '/' || string_agg(name, '/' ORDER BY depth DESC) AS path
        FROM up GROUP BY start
    )""")
    sql = f"WITH RECURSIVE{','.join(ctes)}{_SELECT_PAGE}"
    return sql, arg.values


def _item(row: asyncpg.Record) -> FileRow | FolderRow:
    if row["kind"] == "folder":
        return FolderRow.of(row)
    return FileRow.of(row, folder_id=row["parent_id"])  # one column holds both parents


async def search(conn: Connection, owner: uuid.UUID, query: Query, filters: Filters,
                 *, threshold: float, limit: int, offset: int = 0) -> tuple[list[Hit], int]:
    """One page of the owner's live files and folders matching ``query``, best first,
    and how many match in all. Runs in a read-only transaction of its own on ``conn``
    (the trigram threshold is a transaction-local setting)."""
    sql, args = build_sql(owner, query, filters, limit=limit, offset=offset)
    async with conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('pg_trgm.word_similarity_threshold', $1, true)",
                           repr(float(threshold)))
        rows = await conn.fetch(sql, *args)
    total = int(rows[0]["total"]) if rows else 0
    hits = [Hit(_item(r), round(float(r["score"]), 4), r["path"]) for r in rows
            if r["id"] is not None]
    return hits, total
