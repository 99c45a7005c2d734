"""Integration tests: components together, or with the real systems they use (SQLite and
PostgreSQL ledgers, the CLI, Prefect flows, stage modules in process, DVC in a temporary repository)."""
