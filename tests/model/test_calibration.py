"""Personal calibration and the "not sure" thresholds: the profile's checks, the calibrated answer (the model
adapted by the nearest shots), which letters a profile keeps, and how thresholds and the temperature are chosen."""

from __future__ import annotations

import numpy as np
import pytest

from asl_platform.model.calibration import (
    MAX_SHOTS_PER_LETTER,
    Calibration,
    LetterVerdict,
    ProfileError,
    calibrated_probabilities,
    check_profile,
    distance_probabilities,
    fit_temperature,
    hand_row,
    judge_letters,
    letter_verdicts,
    make_profile,
    shot_distances,
    simulated_calibration,
    with_typical_hands,
)
from asl_platform.model.confidence import choose_threshold

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


def test_the_calibrated_answer_adapts_the_models_and_falls_back_to_it_far_from_every_shot():
    model = np.asarray([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.98, 0.01, 0.01]])
    distances = np.asarray([[2.0, 2.0, 2.0],  # near no shot: every letter as far -> the model's answer
                            [1.0, 0.05, 1.0],  # near its own shot of B: B, though the model said A
                            [1.0, 0.8, 1.0]])  # a sure model, a shot of B only a little nearer: still A
    answers = calibrated_probabilities(model, distances, 0.25)
    assert np.allclose(answers[0], model[0], atol=1e-6)
    assert answers[1].argmax() == 1 and answers[2].argmax() == 0
    # letters with no shot are ones the profile says nothing of: as near as the nearest shot, whatever that is
    partial = calibrated_probabilities(model[:1], np.asarray([[np.inf, 0.1, 3.0]]), 0.25)
    assert partial[0, 0] / partial[0, 1] == pytest.approx(model[0, 0] / model[0, 1], rel=1e-4)  # A vs B: the model's
    assert partial[0, 2] < model[0, 2] / 100  # C's shot is far: C is all but ruled out
    assert np.allclose(calibrated_probabilities(model[:1], np.full((1, 3), np.inf), 0.25), model[:1])  # no shot
    replaced = distance_probabilities(distances[2:], 0.25)  # the shots alone (the old rule) would answer B
    assert replaced.argmax() == 1


def test_the_temperature_of_the_product_is_fitted_too():
    rng = np.random.default_rng(1)
    model = rng.dirichlet(np.ones(4), 3000)
    distances = rng.exponential(1.0, (3000, 4))
    truth = calibrated_probabilities(model, distances, 0.4)
    labels = np.asarray([rng.choice(4, p=p / p.sum()) for p in truth])
    assert fit_temperature(distances, labels, model) == pytest.approx(0.4, rel=0.25)


def test_a_letter_is_used_only_where_it_does_no_worse_than_the_model_on_frames_kept_out():
    # frames kept out: two of A (the model right on one), two of B (the model right on both), one of C
    labels = np.asarray([0, 0, 1, 1, 2])
    model = np.eye(3)[[0, 1, 1, 1, 0]]
    calibrated = np.eye(3)[[0, 0, 0, 1, 2]]  # A's shots fix A's frame but take one of B's; C's fix C's frame
    verdicts = judge_letters(model, calibrated, labels, {0, 1, 2}, {0, 1, 2})
    assert verdicts[0] == LetterVerdict(False, 2, 1, 2, 0, 1)  # gained one, took one: a letter that takes must
    assert "took 1 frame(s)" in verdicts[0].why  # give more than it takes (a swap proves nothing, and risks more)
    assert verdicts[1].used and verdicts[1].lost == 0  # the B frame A took is A's doing, not B's
    taking = np.eye(3)[[0, 1, 0, 0, 2]]  # now A's shots fix nothing and take both of B's
    verdicts = judge_letters(model, taking, labels, {0, 1, 2}, {0, 1, 2})
    assert not verdicts[0].used and "took 2 frame(s)" in verdicts[0].why and verdicts[2].used
    worse = np.eye(3)[[1, 1, 1, 1, 0]]  # A's own frames come out worse
    assert "own frames came out worse" in judge_letters(model, worse, labels, {0}, {0})[0].why

    def answer(kept: set[int]) -> np.ndarray:  # without A's shots the profile is the model plus C's fix
        return taking if 0 in kept else np.eye(3)[[0, 1, 1, 1, 2]]

    settled = letter_verdicts(answer, model, labels, {0, 1, 2})
    assert [settled[letter].used for letter in (0, 1, 2)] == [False, True, True]
    assert "took 2 frame(s)" in settled[0].why  # dropped in the first round: the reason it was dropped for
