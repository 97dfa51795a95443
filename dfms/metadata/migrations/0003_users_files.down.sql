DROP TABLE file_versions;
DROP TABLE files;
DROP TABLE folders;
DROP TABLE refresh_tokens;
DROP TABLE users;
