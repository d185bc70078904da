"""What redis-py raises when Redis cannot be reached or does not answer in time, and telling a cancel from it."""

import asyncio

from redis.exceptions import ConnectionError, TimeoutError

REDIS_ERRORS = (ConnectionError, TimeoutError, OSError)


def cancel_requested() -> bool:
    """The running task was asked to stop. Background loops test it on every turn: redis-py
    can swallow a cancellation whole (it returns from a command that was cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def unless_cancelled(exc: BaseException) -> None:
    """In a background loop's `except`: redis-py can turn the task's cancellation into a
    ConnectionError; re-raise it as what it is, or the loop would retry forever."""
    if cancel_requested():
        raise asyncio.CancelledError() from exc
