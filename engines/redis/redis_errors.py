"""What redis-py raises when Redis cannot be reached or does not answer in time."""

from redis.exceptions import ConnectionError, TimeoutError

REDIS_ERRORS = (ConnectionError, TimeoutError, OSError)
