"""Personal calibration and the "not sure" thresholds: the profile's checks, the nearest-shot answer on
real hands, and how thresholds and the temperature are chosen."""

from __future__ import annotations

import numpy as np
import pytest

from asl_platform.model.calibration import (
    MAX_SHOTS_PER_LETTER,
    Calibration,
    ProfileError,
    check_profile,
    choose_threshold,
    distance_probabilities,
    fit_temperature,
    hand_row,
    make_profile,
    shot_distances,
    simulated_calibration,
    with_typical_hands,
)

MODEL = {"name": "hands", "version": "v1", "sha256": "abc123", "classes": ["A", "B", "C", "space"]}
ROW = [0.5] * 63 + [1.0]


def profile(**changes) -> dict:
    document = make_profile(MODEL, {"A": [ROW, ROW], "B": [ROW]}).model_dump(mode="json")
    document.update(changes)
    return document


def test_a_profile_round_trips_and_knows_its_model():
    checked = check_profile(profile(), MODEL)
    calibration = checked.calibration(MODEL["classes"])
    assert calibration.rows.shape == (3, 64) and calibration.labels.tolist() == [0, 0, 1]
    assert checked.model.sha256 == "abc123" and list(checked.shots) == ["A", "B"]


@pytest.mark.parametrize("raw,code,words", [
    ("not an object", "invalid_profile", "JSON object"),
    ({"shots": {}}, "invalid_profile", "format"),
    (profile(format_version=2), "invalid_profile", "calibrate again"),
    (profile(model={"name": "hands", "version": "v1", "sha256": "other"}), "profile_model_mismatch", "another"),
    (profile(model={"name": "hands", "version": "v2", "sha256": "abc123"}), "profile_model_mismatch", "calibrate again"),
    (profile(shots={"Q": [ROW]}), "invalid_profile", "does not know: Q"),
    (profile(shots={"A": [ROW] * (MAX_SHOTS_PER_LETTER + 1)}), "profile_too_large", "at most"),
    (profile(shots={"A": [ROW[:10]]}), "invalid_profile", "64 finite numbers"),
    (profile(shots={"A": [[float("nan")] * 63 + [1.0]]}), "invalid_profile", "finite"),
    (profile(shots={"A": [[0.0] * 63 + [0.5]]}), "invalid_profile", "handedness"),
    (profile(shots={"A": []}), "invalid_profile", "no shots"),
    (profile(extra=1), "invalid_profile", "malformed"),
])
def test_every_bad_profile_is_refused_with_what_to_do(raw, code, words):
    with pytest.raises(ProfileError) as refused:
        check_profile(raw, MODEL)
    assert refused.value.code == code and words in str(refused.value)


def test_a_shot_is_the_hand_block_as_served():
    hand = {"landmarks": [[float(i), 2.0 * i, -0.5] for i in range(21)], "handedness": "Left"}
    row = hand_row(hand)
    assert len(row) == 64 and row[:3] == [0.0, 0.0, -0.5] and row[3] == 1.0 and row[-1] == 0.0


def test_the_nearest_shot_answers_and_typical_hands_fill_the_letters_left_out():
    embed = lambda rows: np.asarray(rows, np.float64)[:, :2]  # noqa: E731 (a 2-D "hidden layer")
    shots = Calibration(np.asarray([[0, 0], [10, 0], [0, 10]], np.float32), np.asarray([0, 0, 1]))
    typical = Calibration(np.asarray([[50, 50], [60, 60], [-5, 40]], np.float32), np.asarray([0, 1, 2]))
    reference = with_typical_hands(shots, typical)
    assert reference.labels.tolist() == [0, 0, 1, 2]  # only C came from the typical hands
    distances = shot_distances(embed, reference, np.asarray([[9, 1], [1, 9], [-4, 38]], np.float32), 4)
    assert distances.argmin(axis=1).tolist() == [0, 1, 2]  # the nearest of several shots of A counts
    assert np.isinf(distances[:, 3]).all()  # no reference for the 4th class: never answered
    probabilities = distance_probabilities(distances, 0.25)
    assert np.allclose(probabilities.sum(1), 1) and probabilities[:, 3].max() == 0


def test_the_threshold_is_the_lowest_that_keeps_confident_answers_right_enough():
    probabilities = np.asarray([[0.95, 0.05], [0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    labels = np.asarray([0, 0, 0, 1, 1])  # the two least confident answers are wrong
    threshold, precision, coverage = choose_threshold(probabilities, labels, target=0.98)
    assert (threshold, precision, coverage) == (0.61, 1.0, 0.6)
    weights = np.asarray([1, 1, 1, 10, 10])  # counted per folder: the wrong ones weigh more, nothing changes here
    assert choose_threshold(probabilities, labels, weights)[0] == 0.61
    never = choose_threshold(np.asarray([[0.9, 0.1]]), np.asarray([1]))  # unreachable: the most exacting
    assert never[1] == 0.0


def test_the_temperature_is_fitted_where_the_answers_are_honest():
    rng = np.random.default_rng(0)
    true_temperature = 0.5
    distances = rng.exponential(1.0, (4000, 4))
    probabilities = distance_probabilities(distances, true_temperature)
    labels = np.asarray([rng.choice(4, p=p / p.sum()) for p in probabilities])
    assert fit_temperature(distances, labels) == pytest.approx(true_temperature, rel=0.2)


def test_a_simulated_calibration_keeps_its_shots_out_of_what_it_measures():
    rows = np.repeat(np.arange(12, dtype=np.float32)[:, None], 64, axis=1)
    labels = np.asarray([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
    groups = np.asarray([0] * 8 + [1] * 4)
    distances, measured, positions = simulated_calibration(lambda r: r[:, :3], rows, labels, groups, 2, shots=1)
    assert len(set(positions)) == len(positions) == 12 - 4  # one shot per letter and group left out
    assert (labels[positions] == measured).all() and distances.shape == (8, 2)
