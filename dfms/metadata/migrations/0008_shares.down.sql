DROP INDEX share_links_file_idx;
DROP INDEX share_links_owner_idx;
DROP TABLE share_links;
