"""The timing of one round of one Python implementation, and the summary over rounds."""

import statistics
import time
from dataclasses import dataclass, field

# Upper bound on the timed calls in one round, so a very fast op cannot run for long.
MAX_CALLS_PER_ROUND = 100_000


@dataclass
class RoundSettings:
    """How long each implementation runs in one round."""

    warmup: int = 1
    min_calls: int = 3
    min_time: float = 0.03
    # Pause after each implementation, so threads that spin after finishing (OpenMP,
    # onnxruntime's pool) go to sleep before the next implementation starts its clock.
    pause: float = 0.01


def time_round(run, settings):
    """Call `run` `settings.warmup` times untimed, then at least `min_calls` times and until
    the timed calls add up to `min_time` seconds. Return the median call in seconds."""
    for _ in range(settings.warmup):
        run()
    samples = []
    total = 0.0
    while len(samples) < settings.min_calls or total < settings.min_time:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        total += elapsed
        if len(samples) >= MAX_CALLS_PER_ROUND:
            break
    time.sleep(settings.pause)
    return statistics.median(samples)


@dataclass
class Timings:
    """The per-round medians of one implementation on one case, in seconds."""

    rounds: list = field(default_factory=list)

    def median(self):
        return statistics.median(self.rounds) if self.rounds else None

    def minimum(self):
        return min(self.rounds) if self.rounds else None
