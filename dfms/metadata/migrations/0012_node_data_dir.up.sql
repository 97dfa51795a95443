-- Where a node keeps its objects, as a path on the health monitor's host, when the
-- monitor can see it (`dfms up`'s nodes, a single-host deployment): the monitor reports
-- the free and total bytes of that filesystem (dfms_node_disk_*). NULL for a node on
-- another host (a MinIO server), whose capacity comes from its own metrics.
ALTER TABLE nodes ADD COLUMN data_dir text;
