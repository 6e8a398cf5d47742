"""Practice mode: learning the alphabet at the webcam. ``Practice`` is one learner's round (targets,
the hold that counts as success, score, streak, per-letter record); it lives in the browser session
(the demo's ``gr.State``), so nothing is stored on the server and nothing leaves the machine.
``check`` is the stateless part another front end can call over HTTP (``POST /v1/practice/check``):
one frame against one target, with what to change when it is wrong.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from asl_platform.hands.shapes import DESCRIPTIONS, MOTION_LETTERS, HandShape, accepted_labels, canonical, hints
from asl_platform.serving.hold import Hold

Mode = Literal["letters", "word", "weakest"]
NOT_PRACTISED = ("nothing",)  # no handshape to learn


def model_shapes(info: dict) -> dict[str, HandShape]:
    """The typical shapes a model's description carries (``ImageClassifier`` adds its hand_shapes.json)."""
    return {name: HandShape.from_json(data) for name, data in (info.get("hand_shapes") or {}).items()}


def practice_letters(classes: list[str]) -> list[str]:
    """The model's classes a learner can practise (all but ``nothing``)."""
    return [c for c in classes if c not in NOT_PRACTISED]


NOT_SURE = "Not sure what this is: hold still, and move closer to the camera."


def check(label: str, probability: float, confident: bool, hand: dict | None, target: str,
          shapes: dict[str, HandShape]) -> dict:
    """One frame against ``target``: right or not, what it looks like instead, and what to change
    (from the landmarks, when the model found a hand and the target has a typical shape). An answer
    that is not confident (``confident``: ``serving.backends.confident``) is never right: a model
    that is unsure must not teach a sign."""
    sure = confident
    correct = label in accepted_labels(target) and sure
    advice: list[str] = []
    if not correct and hand and hand.get("found") and target in shapes:
        advice = hints(canonical(np.asarray(hand["landmarks"], np.float32), hand["handedness"]), shapes[target])
    if not correct and hand is not None and not hand.get("found") and target != "nothing":
        advice = ["No hand found: show your whole hand to the camera, in good light."]
    elif not sure:
        advice = [NOT_SURE, *advice][:2]
    return {"target": target, "label": label, "probability": round(float(probability), 4), "confident": sure,
            "correct": correct, "looks_like": None if correct or not sure else label, "hints": advice,
            "motion": target in MOTION_LETTERS, "description": DESCRIPTIONS.get(target, "")}


@dataclass
class LetterRecord:
    shown: int = 0
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0  # time to success, summed over successes

    @property
    def misses(self) -> float:
        """How much this letter costs the learner: skips count fully, slow successes in part."""
        return self.skipped + (self.seconds / self.done / 10 if self.done else 0.0)


@dataclass
class Practice:
    """A practice round. ``update`` takes each frame's top answer; a target is done once it has been
    the confident answer for ``hold_s`` seconds, then the next target comes. In ``word`` mode the
    targets are the word's letters in order (a word done scores one more)."""

    letters: list[str]
    hold_s: float = 1.0
    mode: Mode = "letters"
    word: str = ""
    position: int = 0
    target: str | None = None
    shown_at: float = 0.0
    hold: Hold = field(default_factory=lambda: Hold(1.0))
    score: int = 0
    streak: int = 0
    best_streak: int = 0
    words_done: int = 0
    records: dict[str, LetterRecord] = field(default_factory=dict)
    history: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the round, score)
    started_at: float = 0.0
    seed: int = 0
    hand_drawn_at: float = float("-inf")  # when the page last drew the learner's hand (a few times a second, not 20)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self.hold.hold_s = self.hold_s

    def start(self, mode: Mode, now: float, word: str = "") -> str:
        """Begin a round; returns the first target. ``word`` mode needs letters the model knows."""
        word = "".join(ch for ch in word.upper() if not ch.isspace())
        if mode == "word":
            unknown = sorted({ch for ch in word if ch not in self.letters})
            if not word or unknown:
                raise ValueError(f"type a word of the letters {''.join(c for c in self.letters if len(c) == 1)}"
                                 + (f" (not {', '.join(unknown)})" if unknown else ""))
        self.mode, self.word, self.position = mode, word, 0
        self.score = self.streak = self.best_streak = self.words_done = 0
        self.records, self.history, self.started_at = {}, [(0.0, 0)], now
        self._show(self._pick(), now)
        return self.target

    def _pick(self) -> str:
        if self.mode == "word":
            return self.word[self.position]
        choices = [c for c in self.letters if c != self.target] or self.letters
        if self.mode == "weakest" and self.records:
            worst = sorted(choices, key=lambda c: -self.records.get(c, LetterRecord()).misses)
            weak = [c for c in worst if self.records.get(c, LetterRecord()).misses > 0][:3]
            if weak:
                return self._random.choice(weak)
        return self._random.choice(choices)

    def _show(self, target: str, now: float) -> None:
        self.target, self.shown_at = target, now
        self.hold.clear()
        self.records.setdefault(target, LetterRecord()).shown += 1

    def update(self, label: str, now: float, confident: bool) -> bool:
        """Feed one frame; True when it completes the target (the next one is then shown). A frame that
        is not confident breaks the hold like a wrong one."""
        if self.target is None:
            return False
        self.hold.hold_s = self.hold_s
        if not self.hold.feed(self.target if label in accepted_labels(self.target) and confident else None, now):
            return False
        record = self.records[self.target]
        record.done += 1
        record.seconds += now - self.shown_at
        self.score += 1
        self.streak += 1
        self.best_streak = max(self.best_streak, self.streak)
        if self.mode == "word":
            self.position += 1
            if self.position == len(self.word):
                self.words_done += 1
                self.score += 1
                self.position = 0
        self.history.append((round(now - self.started_at, 1), self.score))
        self._show(self._pick(), now)
        return True

    def skip(self, now: float) -> None:
        """Give up on this target (it counts as missed; the streak ends)."""
        if self.target is None:
            return
        self.records[self.target].skipped += 1
        self.streak = 0
        if self.mode == "word":
            self.position = (self.position + 1) % len(self.word)
        self._show(self._pick(), now)

    def hold_progress(self, now: float) -> float:
        return self.hold.progress(now)

    def table(self) -> list[list]:
        """Per letter practised: shown, done, skipped, mean seconds to success."""
        return [[letter, r.shown, r.done, r.skipped, round(r.seconds / r.done, 1) if r.done else None]
                for letter, r in sorted(self.records.items())]
