"""What the commands print for a human, from the JSON they would print with --json."""

from __future__ import annotations


def test_search_result_renders_in_the_targets_unit() -> None:
    """A best plan measured in emulated instructions renders in instructions (it raised KeyError: 'p10')."""
    from autoquant.cli._search import SearchCommand
    from autoquant.targets import LatencyResult

    def result(latency: LatencyResult) -> dict:  # type: ignore[type-arg]
        best = {"trial": 4, "summary": "conv1 w8a8", "latency_ratio": latency.ratio, "retention": 0.99,
                "reward": 6.0, "fp32_reward": 6.1, "size_bytes": 1000, "size_ratio": 0.3,
                "latency": latency.to_json()}
        return {"run": "runs/x", "method": "joint", "agent": "ilp", "target": latency.target, "complete": 5,
                "failed": 0, "repeats": 0, "wall_s": 10, "best": best, "reference": {}}

    emulated = LatencyResult(target="arm-a76-emulated", unit="instructions", candidate={"instructions": 1.25e6},
                             reference={"instructions": 4.93e6}, statistic="instructions", calls=20, facts={})
    text = SearchCommand().render(result(emulated))
    assert "latency ratio 0.254 to fp32 (1,250,000 vs 4,930,000 instructions)" in text
    host = LatencyResult(target="host", unit="ms", candidate={"p10": 0.07}, reference={"p10": 0.35},
                         statistic="p10", calls=600, facts={})
    assert "(p10 0.0700 ms vs 0.3500 ms)" in SearchCommand().render(result(host))
