"""The Python libraries escrow's ideas come from, timed on the jobs escrow's
benchmark times, so that `cargo bench` can print them side by side:

- airlock: a scope with 2 enqueued intents, flushed to an in-memory list on
  exit (escrow: a whole fresh-sandbox run recording 2 intents and delivering
  them to an in-memory sink);
- purgatory: one call through a closed breaker, and the same call without
  one (escrow: an invoke through a closed breaker, and without one).

Prints one `name nanoseconds` line per figure: the median of 7 timings,
each of enough calls to take at least 0.2 s. Run by benches/escrow.rs with
the interpreter of a virtual environment holding requirements.txt.
"""

import asyncio
import statistics
import sys
import timeit

import airlock
from purgatory import AsyncCircuitBreakerFactory


def median_ns(timer: timeit.Timer) -> float:
    number, _ = timer.autorange()
    number = max(number, 1)
    number *= 2
    times = timer.repeat(repeat=7, number=number)
    return statistics.median(times) / number * 1e9


def airlock_scope() -> float:
    delivered = []

    def deliver(n: int) -> None:
        delivered.append(n)

    def run() -> None:
        with airlock.scope():
            airlock.enqueue(deliver, n=1)
            airlock.enqueue(deliver, n=2)
        delivered.clear()

    return median_ns(timeit.Timer(run))


def purgatory_call() -> tuple[float, float]:
    loop = asyncio.new_event_loop()
    breakers = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    loop.run_until_complete(breakers.initialize())

    async def noop() -> bytes:
        return b""

    guarded = breakers("bench")(noop)
    calls = 1000

    async def through_breaker() -> None:
        for _ in range(calls):
            await guarded()

    async def bare() -> None:
        for _ in range(calls):
            await noop()

    with_breaker = median_ns(timeit.Timer(lambda: loop.run_until_complete(through_breaker())))
    without = median_ns(timeit.Timer(lambda: loop.run_until_complete(bare())))
    loop.close()
    return with_breaker / calls, without / calls


def main() -> None:
    print(f"python {sys.version.split()[0]}")
    print(f"airlock_scope_two_intents {airlock_scope():.0f}")
    with_breaker, without = purgatory_call()
    print(f"purgatory_breaker_call {with_breaker:.0f}")
    print(f"purgatory_bare_call {without:.0f}")


if __name__ == "__main__":
    main()
