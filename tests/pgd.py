"""A real PostgreSQL for tests: the launcher lives in bench/pgd.py, which the bench's store phase shares."""

from bench.pgd import AS_POSTGRES, BIN, TIMEOUT, PostgresServer, missing, postgres_server

__all__ = ["AS_POSTGRES", "BIN", "TIMEOUT", "PostgresServer", "missing", "postgres_server"]
