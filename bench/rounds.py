"""The rounds: a warm-up, then every phase on every subject, interleaved (who goes first
rotates from round to round), so that the baseline and the proxies are measured alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.scenarios import Bench, Subject


def warm_up(bench: Bench, subjects: list[Subject]) -> None:
    """Not counted: logins cached, heaps grown, code paths hot."""
    for subject in subjects:
        bench.client.call(
            "exchange",
            route=subject.route,
            target=bench.echo,
            clients=4,
            seconds=0.3,
            max_count=500,
        )
        bench.client.call(
            "throughput",
            route=subject.route,
            target=bench.sink,
            direction="up",
            tunnels=1,
            cap_bytes=64 << 20,
            seconds=0.5,
        )


def run_rounds(bench: Bench, everyone: list[Subject], only: list[str]) -> None:
    """``bench.plan.rounds`` rounds of the phases in ``only``; each subject's figures of a
    round appended to its ``values``."""
    rounds = bench.plan.rounds
    for round_ in range(rounds):
        bench.say(f"round {round_ + 1}/{rounds}")
        shift = round_ % len(everyone)
        order = everyone[shift:] + everyone[:shift]  # interleaved: who goes first rotates
        round_values: dict[str, dict[str, Any]] = {s.name: {} for s in everyone}
        phases: list[tuple[str, Callable[[], None]]] = [
            ("throughput", lambda o=order, v=round_values: bench.throughput(o, v)),
            ("exchange", lambda o=order, v=round_values: bench.exchange(o, v)),
            ("idle", lambda o=order, v=round_values: bench.idle(o, v)),
            ("busy", lambda o=order, v=round_values: bench.busy(o, v)),
            ("storm", lambda o=order, v=round_values, r=round_: bench.storm(o, v, r)),
        ]
        for name, phase in phases:
            if name in only:
                bench.guarded(f"round {round_ + 1} {name}", phase)
        for subject in everyone:
            subject.values.append(round_values[subject.name])
