"""stpm-export's parity report (stpm_edge.export.parity): score errors in units of the calibrated
score range, and a ranking check that ignores the order of frames whose scores tie."""

from __future__ import annotations

import numpy as np

from stpm_edge.export import parity


def outputs(scores: list[float]) -> dict[str, np.ndarray]:
    s = np.array(scores, np.float32)
    return {"anomaly_map": np.ones((len(s), 4, 4), np.float32), "score": s, "score_normalized": s}


def test_score_error_is_given_in_the_calibrated_range() -> None:
    # good frames scored above a baseline sit near 0: 1e-3 off is 100 % of the score itself
    report = parity.compare(outputs([0.001, 0.5]), outputs([0.002, 0.5]), "int8", score_range=2.0)
    assert np.isclose(report.score_error_of_range, 0.0005, rtol=1e-3)
    assert np.isclose(report.max_abs_score_error, 0.001, rtol=1e-3)


def test_frames_that_tie_may_swap_but_others_may_not() -> None:
    tie = 1e-3
    assert parity.same_ranking(np.array([0.0, 1e-5, 1.0]), np.array([1e-5, 0.0, 1.0]), tie)
    assert not parity.same_ranking(np.array([0.0, 0.5, 1.0]), np.array([0.6, 0.5, 1.0]), tie)
    assert not parity.same_ranking(np.array([0.0, 1.0]), np.array([1.0, 1.0]), tie)  # a new tie
