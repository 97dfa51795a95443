DROP TABLE repair_queue;
