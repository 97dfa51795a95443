-- Name search over files and folders: full text (words split on any separator, so
-- 'quarterly_report-2024.pdf' is 'quarterly' 'report' '2024' 'pdf'), substrings and
-- typo tolerance (trigrams). Case- and accent-insensitive. See dfms/metadata/search.py.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS unaccent;

-- The folded form of a name or query: accents removed, then lowercased. unaccent() is
-- only STABLE (its dictionary is looked up by name), so it is wrapped here; the SQL-
-- standard body binds the function and the dictionary when this runs, so the result no
-- longer depends on search_path. pg_c_utf8 makes lower() Unicode-aware (the database's
-- own collation may be C, which lowercases ASCII only).
CREATE FUNCTION dfms_search_fold(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN lower(unaccent('unaccent'::regdictionary, value) COLLATE pg_c_utf8);

-- The words of a name: every run of characters other than letters and digits (any
-- script, again via pg_c_utf8) becomes one space. 'simple' would otherwise keep
-- 'quarterly_report-2024.pdf' as a single file-name token.
CREATE FUNCTION dfms_search_words(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN btrim(regexp_replace(dfms_search_fold(value) COLLATE pg_c_utf8,
                                '[^[:alnum:]]+', ' ', 'g'));

CREATE FUNCTION dfms_search_tsv(value text) RETURNS tsvector
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN to_tsvector('simple'::regconfig, dfms_search_words(value));

-- A query's words AND-ed, each as a prefix ('quar rep' -> 'quar':* & 'rep':*). Words
-- hold only letters, digits and single spaces; each is quoted (and escaped) all the
-- same, so no input can make a tsquery syntax error. NULL when there are no words.
CREATE FUNCTION dfms_search_query(value text) RETURNS tsquery
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    SELECT to_tsquery('simple'::regconfig, string_agg(
               '''' || replace(replace(w, '\', '\\'), '''', '\''') || ''':*', ' & '))
    FROM regexp_split_to_table(dfms_search_words(value), ' ') AS w
    WHERE w <> '';
END;

-- A LIKE pattern matching names that contain the folded value literally: '\', '%' and
-- '_' escaped (after folding: unaccent maps e.g. a fullwidth percent sign to '%').
-- NULL when the value folds to nothing.
CREATE FUNCTION dfms_search_contains(value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN '%' || NULLIF(replace(replace(replace(dfms_search_fold(value), '\', '\\'),
                                         '%', '\%'), '_', '\_'), '') || '%';

-- Stored, so that neither matching (index rechecks) nor ranking recomputes them per row:
-- the unaccent wrapper cannot be inlined and to_tsvector is not cheap either.
ALTER TABLE files
    ADD COLUMN search_name text GENERATED ALWAYS AS (dfms_search_fold(name)) STORED,
    ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS (dfms_search_tsv(name)) STORED;
ALTER TABLE folders
    ADD COLUMN search_name text GENERATED ALWAYS AS (dfms_search_fold(name)) STORED,
    ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS (dfms_search_tsv(name)) STORED;

-- Trash never shows up in search, so it is not indexed either; queries must say
-- "deleted_at IS NULL" for these partial indexes to apply. The trigram indexes serve
-- both the LIKE substring tests and word similarity (%>).
CREATE INDEX files_search_tsv_idx ON files USING gin (search_tsv) WHERE deleted_at IS NULL;
CREATE INDEX files_search_trgm_idx ON files USING gin (search_name gin_trgm_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX folders_search_tsv_idx ON folders USING gin (search_tsv) WHERE deleted_at IS NULL;
CREATE INDEX folders_search_trgm_idx ON folders USING gin (search_name gin_trgm_ops)
    WHERE deleted_at IS NULL;
