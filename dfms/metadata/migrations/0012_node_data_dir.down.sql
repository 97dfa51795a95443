ALTER TABLE nodes DROP COLUMN data_dir;
