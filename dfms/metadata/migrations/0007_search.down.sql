DROP INDEX folders_search_trgm_idx;
DROP INDEX folders_search_tsv_idx;
DROP INDEX files_search_trgm_idx;
DROP INDEX files_search_tsv_idx;
ALTER TABLE folders DROP COLUMN search_tsv, DROP COLUMN search_name;
ALTER TABLE files DROP COLUMN search_tsv, DROP COLUMN search_name;
DROP FUNCTION dfms_search_contains(text);
DROP FUNCTION dfms_search_query(text);
DROP FUNCTION dfms_search_tsv(text);
DROP FUNCTION dfms_search_words(text);
DROP FUNCTION dfms_search_fold(text);
-- The extensions go too, unless something else (a later feature, an operator) has come
-- to depend on them since: then they stay and the revert still succeeds.
DO $$
BEGIN
    DROP EXTENSION IF EXISTS unaccent;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'unaccent is still in use; keeping it';
END $$;
DO $$
BEGIN
    DROP EXTENSION IF EXISTS pg_trgm;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'pg_trgm is still in use; keeping it';
END $$;
