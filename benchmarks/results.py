"""Result encoding on the hot path: the server's dispatch + encode per call, before and after results were
serialized as their declared return type, in one run.

Per call, what ``session.Session._run_inline`` does, without a socket:

  * before: ``registry.resolve`` -> the function -> ``encoding.reply_result`` (orjson for every result);
  * after:  ``registry.resolve`` -> the function -> ``entry.encode_result`` (``encoding.dump_json`` itself
    for plain JSON return types; pydantic's serializer for the annotation otherwise) -> ``encoding.reply_body``.

Cases: ``add_numbers(1, 2)`` (-> int | float, the fast path), ``echo({"a": [1, 2.5, "x"]})`` (-> Any, the
fast path) and, after only, a ``-> Decimal`` function (the declared path, for scale). Each round times
every variant back to back (--calls calls each, time.perf_counter_ns, order rotated); the table shows the
median ns per call over --rounds rounds and the median of the rounds' after/before ratios (target: 1.00x
within noise for the fast path).

    python benchmarks/results.py [--calls 20000] [--rounds 31]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from synapse_cli.core import encoding, protocol
from synapse_cli.core.registry import Registry
from synapse_cli.server.builtins import default_registry


def before(registry: Registry, func: str, args: list[Any]) -> Callable[[], bytes]:
    def call() -> bytes:
        entry, positional, keywords = registry.resolve(func, args)
        return encoding.reply_result(1, protocol.NATIVE, entry.func(*positional, **keywords))

    return call


def after(registry: Registry, func: str, args: list[Any]) -> Callable[[], bytes]:
    def call() -> bytes:
        entry, positional, keywords = registry.resolve(func, args)
        result = entry.func(*positional, **keywords)
        if (body := entry.encode_result(result)) is None:
            raise entry.result_error(result)
        return encoding.reply_body(1, protocol.NATIVE, body)

    return call


def ns_per_call(call: Callable[[], bytes], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) / calls


def measure(calls: int = 20_000, rounds: int = 31) -> list[dict[str, Any]]:
    """Median ns per call of each variant and median of the per-round after/before ratios.

    Each round times every variant back to back (order rotated), so a ratio compares two runs made
    milliseconds apart: the machine's noise, which moves absolute figures by tens of percent on a
    shared machine, mostly cancels out in it. One warm-up round is excluded.
    """
    registry = default_registry()

    def price() -> Decimal:
        return Decimal("1.50")

    registry.add(price, inline=True)
    echo_args: list[Any] = [{"a": [1, 2.5, "x"]}]
    variants = {
        ("add_numbers(1, 2)", "before"): before(registry, "add_numbers", [1, 2]),
        ("add_numbers(1, 2)", "after"): after(registry, "add_numbers", [1, 2]),
        ("echo({...})", "before"): before(registry, "echo", echo_args),
        ("echo({...})", "after"): after(registry, "echo", echo_args),
        ("price() -> Decimal", "after"): after(registry, "price", []),
    }
    assert variants["add_numbers(1, 2)", "after"]() == variants["add_numbers(1, 2)", "before"]()
    assert variants["echo({...})", "after"]() == variants["echo({...})", "before"]()
    assert variants["price() -> Decimal", "after"]() == b'{"id":1,"result":"1.50","error":null}'
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for round_number in range(rounds + 1):
        keys = list(variants)
        keys = keys[round_number % len(keys) :] + keys[: round_number % len(keys)]  # rotate the order
        for key in keys:
            value = ns_per_call(variants[key], calls)
            if round_number:  # round 0 warms up
                samples[key].append(value)
    rows = []
    for case in dict.fromkeys(case for case, _ in variants):
        new = samples[case, "after"]
        old = samples.get((case, "before"))
        ratio = statistics.median(n / o for n, o in zip(new, old, strict=True)) if old else None
        old_ns = statistics.median(old) if old else None
        rows.append({"case": case, "before_ns": old_ns, "after_ns": statistics.median(new), "ratio": ratio})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=31)
    options = parser.parse_args()
    print(f"dispatch + encode, median ns per call over {options.rounds} rounds of {options.calls:,} calls")
    print(f"{'case':<22}{'before':>10}{'after':>10}{'after/before':>14}  (median of the rounds' ratios)")
    for row in measure(options.calls, options.rounds):
        old = f"{row['before_ns']:.0f}" if row["before_ns"] else "-"
        ratio = f"{row['ratio']:.3f}x" if row["ratio"] else "-"
        print(f"{row['case']:<22}{old:>10}{row['after_ns']:>10.0f}{ratio:>14}")


if __name__ == "__main__":
    main()
