DROP TABLE manifest_entries;
DROP TABLE manifests;
DROP TABLE chunk_replicas;
DROP TABLE chunks;
