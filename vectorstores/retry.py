"""Retries with exponential backoff for the stores that talk to a server.

A store on a server (PostgreSQL by DSN, a Chroma server) meets errors that go away by
themselves: a refused or reset connection while the server restarts, a connection the
server closed, an HTTP 502/503/504 from a proxy. :func:`retry` runs one piece of work again
after such an error, waiting ``base``, ``2 x base``, ... (at most ``cap`` seconds each),
within a bound on both the number of attempts and the total time; any other error (a bad
query, a missing collection, a failed login) is raised at once. When the bound is spent,
the caller gets :class:`Unreachable`, holding the last error, the attempts and the time,
to word as a :class:`~rag.errors.StoreError` that names the server.

Every piece of work a store retries is one transaction, one read, or an idempotent write,
so running it twice is harmless (see each store's ``_run``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """How often and how long to retry: ``attempts`` in all (the first included), waits
    of ``base`` x 2^n seconds up to ``cap`` each, and no new attempt once ``budget``
    seconds have passed since the first."""

    attempts: int = 5
    base: float = 0.2
    cap: float = 2.0
    budget: float = 10.0

    def delays(self) -> list[float]:
        """The waits between attempts, in order."""
        return [min(self.cap, self.base * 2**n) for n in range(max(0, self.attempts - 1))]


#: The policy of the server stores: 5 attempts, 0.2 + 0.4 + 0.8 + 1.6 s of waits, 10 s in all
#: (plus one last attempt's own timeout).
SERVER_BACKOFF = Backoff()


class Unreachable(Exception):
    """Transient errors outlasted the retries: ``error`` is the last, after ``attempts``
    attempts over ``seconds``. Internal: stores turn it into a StoreError."""

    def __init__(self, error: BaseException, attempts: int, seconds: float) -> None:
        super().__init__(str(error))
        self.error, self.attempts, self.seconds = error, attempts, seconds

    def summary(self) -> str:
        return f"{self.attempts} attempt(s) over {self.seconds:.1f} s"


def retry(
    work: Callable[[], _T],
    *,
    transient: Callable[[BaseException], bool],
    what: str,
    policy: Backoff = SERVER_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """``work()``, run again after an error ``transient`` accepts, within ``policy``.

    Raises the first error that is not transient as it is, and :class:`Unreachable`
    (from the last transient one) when the attempts or the time run out.
    """
    started = time.monotonic()
    delays = policy.delays()
    for attempt in range(1, policy.attempts + 1):
        try:
            return work()
        except Exception as e:
            if not transient(e):
                raise
            elapsed = time.monotonic() - started
            delay = delays[attempt - 1] if attempt <= len(delays) else None
            if delay is None or elapsed + delay > policy.budget:
                raise Unreachable(e, attempt, elapsed) from e
            log.info("%s: %s; retrying in %.1f s (attempt %d)", what, e, delay, attempt + 1)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
