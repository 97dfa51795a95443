"""Accounts and tokens: Argon2id passwords, ES256 access tokens, rotating refresh tokens."""
