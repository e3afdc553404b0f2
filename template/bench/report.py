"""The benchmark's arithmetic: percentiles, rates and the lines it prints."""

from dataclasses import dataclass


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between the closest ranks."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Sample:
    """One task: when it was sent, when it started, when it finished (epoch seconds)."""

    sent_at: float
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class Summary:
    count: int
    seconds: float  # first send to last finish
    p50_ms: float  # enqueue-to-start latency
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


def summarize(samples: list[Sample]) -> Summary:
    if not samples:
        raise ValueError("no samples")
    waits = [max(0.0, s.started_at - s.sent_at) for s in samples]
    seconds = max(s.finished_at for s in samples) - min(s.sent_at for s in samples)
    return Summary(
        count=len(samples),
        seconds=seconds,
        p50_ms=percentile(waits, 50) * 1000,
        p99_ms=percentile(waits, 99) * 1000,
    )


def tasks_line(label: str, summary: Summary) -> str:
    return (
        f"{label}: {summary.count} tasks in {summary.seconds:.2f} s = {summary.rate:.0f} tasks/s;"
        f" enqueue-to-start p50 {summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms"
    )


def latency_line(label: str, latencies: list[float], seconds: float) -> str:
    """One line for request latencies (seconds) measured over `seconds` of wall time."""
    rate = len(latencies) / seconds if seconds > 0 else float("inf")
    return (
        f"{label}: {len(latencies)} requests = {rate:.0f} req/s;"
        f" p50 {percentile(latencies, 50) * 1000:.1f} ms,"
        f" p99 {percentile(latencies, 99) * 1000:.1f} ms"
    )
