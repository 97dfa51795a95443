DROP TABLE scrub_state;
