DROP TABLE ring_state;
DROP TABLE nodes;
