"""Retry back-off: exponential, capped, with jitter so a fleet does not retry in step."""

from __future__ import annotations

import random

from nodeguard.events.worker import Backoff


def test_delays_double_up_to_the_cap_with_half_of_each_random() -> None:
    b = Backoff(0.5, 30.0, random.Random(7))
    delays = [b.next_delay() for _ in range(10)]
    ceilings = [min(30.0, 0.5 * 2 ** i) for i in range(10)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30.0
    b.reset()
    assert b.next_delay() <= 0.5


def test_two_agents_do_not_retry_in_step() -> None:
    a, b = Backoff(1.0, 60.0, random.Random(1)), Backoff(1.0, 60.0, random.Random(2))
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]


def test_many_failures_do_not_overflow() -> None:
    b = Backoff(0.5, 30.0)
    for _ in range(10_000):
        assert b.next_delay() <= 30.0
