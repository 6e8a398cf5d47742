"""The demo's session rules, pure and without Gradio: fingerspelling (``Speller``: answers -> text) and a
calibration in progress (``Calibrating``: each letter's shots from a steady hold, its check hold, a frame the
model reads as another letter flagged), both holding by the one rule of ``serving.hold``; practice's round is
``serving.practice``. The tabs (``serving.demo``) wire them to the page's components.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asl_platform.config import ServeConfig
from asl_platform.hands.shapes import accepted_labels
from asl_platform.serving.backends import Prediction, confident
from asl_platform.serving.hold import Hold, pose, same_pose
from asl_platform.serving.protocol import top_predictions


@dataclass
class Speller:
    """Turns a stream of per-frame predictions into text.

    A sign is committed once it has been the confident top prediction for ``hold_s`` seconds (``Hold``).
    The same letter is not committed twice in a row until the hand shows something else (drop the
    hand for a moment, ``nothing``, to spell a double letter); ``del`` repeats while held, like a
    backspace key. ``space`` adds a space, ``nothing`` adds nothing. Each frame's answer is the
    mean of the last ``window`` frames' probabilities (``smooth``): one odd frame does not restart a hold.
    """

    hold_s: float = 1.0
    text: str = ""
    committed: str | None = None
    window: int = 3
    recent: list[dict[str, float]] = field(default_factory=list)
    hold: Hold = field(default_factory=lambda: Hold(1.0))

    def __post_init__(self) -> None:
        self.hold.hold_s = self.hold_s

    @property
    def candidate(self) -> str | None:
        """The label being held."""
        return self.hold.key

    def smooth(self, top: dict[str, float]) -> tuple[str, float]:
        """Add one frame's ``{label: probability}`` and return the best label over the last frames."""
        self.recent = [*self.recent, top][-self.window:]
        labels = {label for frame in self.recent for label in frame}
        mean = {label: sum(frame.get(label, 0.0) for frame in self.recent) / len(self.recent) for label in labels}
        label = max(mean, key=mean.get)
        return label, mean[label]

    @classmethod
    def of(cls, settings: ServeConfig) -> Speller:
        return cls(settings.spell_hold_s)

    def follow(self, settings: ServeConfig) -> None:
        """Take the hold time ``settings`` holds now (a session's Speller outlives a reconfigure)."""
        self.hold_s = self.hold.hold_s = settings.spell_hold_s

    def update(self, label: str, now: float, confident: bool) -> str | None:
        """Feed one frame's top answer; returns the sign committed on this frame, if any. An unsure
        frame (not ``confident``: ``serving.backends.confident``; the hand moving, too far) restarts the hold."""
        if not self.hold.feed(label if confident else None, now):
            return None
        if label == self.committed and label != "del":
            return None
        self.committed = label
        self.hold.restart(now)
        if label == "space":
            self.text += " "
        elif label == "del":
            self.text = self.text[:-1]
        elif label != "nothing":
            self.text += label
        return label

    def progress(self, now: float) -> float:
        """How far (0..1) the current candidate is towards being committed."""
        if self.candidate is None or (self.candidate == self.committed and self.candidate != "del"):
            return 0.0
        return self.hold.progress(now)

    def clear(self) -> None:
        self.text, self.committed, self.recent = "", None, []
        self.hold.clear()


CALIBRATION_SHOTS = 3  # per letter, from one steady hold
CALIBRATION_READY_S = 1.5  # after a letter appears nothing is taken: the hand is still changing from the last one
CALIBRATION_HOLD_S = 0.6  # the hand held still this long (``Hold`` over its pose) before a frame is a shot
CALIBRATION_GAP_S = 0.3  # between two shots, so that they are not the same frame twice


@dataclass
class LetterTake:
    """One letter's calibration: its shots (frame bytes or None for a hand from the page, and the model's
    answer), the frame of its separate check hold, and a frame the model read as another letter, waiting
    for the learner to keep it or sign again."""

    shots: list[tuple[bytes | None, Prediction]] = field(default_factory=list)
    check: tuple[bytes | None, Prediction] | None = None
    flagged: tuple[bytes | None, Prediction, str] | None = None
    keep_anyway: bool = False  # the learner kept a hand the model reads as another letter: this is how they sign it
    skipped: bool = False

    @property
    def done(self) -> bool:
        return self.skipped or self.check is not None


@dataclass
class Calibrating:
    """A calibration in progress: each letter in turn, shots from a steady hold, then a check from a second
    hold (the hand lowered or moved in between) that measures the profile. ``offer`` takes each frame and
    says what happened; a frame the model confidently reads as another letter is not stored but flagged
    (``keep`` stores it). Letters can be skipped, redone, gone back to; a finished session can go on."""

    letters: list[str]
    info: dict  # the model's description: its thresholds decide "confidently another letter"
    position: int = 0
    shown_at: float = 0.0
    last_shot: float = 0.0
    phase: str = "shots"  # shots -> lower (the hand must drop or move) -> check -> the next letter
    hold: Hold = field(default_factory=lambda: Hold(CALIBRATION_HOLD_S))
    held_pose: object = None  # the shots' pose: the check needs the hand to have left it
    takes: dict[str, LetterTake] = field(default_factory=dict)
    last: str = ""  # what the last frame did, for the page

    @property
    def target(self) -> str | None:
        return self.letters[self.position] if self.position < len(self.letters) else None

    def take(self, letter: str) -> LetterTake:
        return self.takes.setdefault(letter, LetterTake())

    def shots(self, letter: str) -> int:
        return len(self.takes[letter].shots) if letter in self.takes else 0

    def _go(self, position: int, now: float) -> None:
        self.position, self.shown_at, self.phase, self.held_pose = position, now, "shots", None
        self.hold.clear()

    def offer(self, data: bytes | None, prediction: Prediction, now: float) -> str:
        """One frame: returns what it did (``ready``, ``hold``, ``lower``, ``shot``, ``flagged``, ``check``)."""
        target = self.target
        if target is None:
            return ""
        take, hand = self.take(target), pose(prediction.hand)
        if now - self.shown_at < CALIBRATION_READY_S:
            self.hold.clear()
            self.last = "ready"
        elif self.phase == "lower":  # the check is a new hold: the hand must leave the shots' pose first
            if hand is None or not same_pose(hand, self.held_pose):
                self.phase = "check"
                self.hold.clear()
            self.last = "lower"
        elif not self.hold.feed(hand, now, same_pose) or now - self.last_shot < CALIBRATION_GAP_S:
            self.last = "hold"
        elif self.phase == "check":
            take.check = (data, prediction)
            self.last = "check"
            self._go(self._next_position(), now)
        else:
            self.last = self._shot(take, target, data, prediction, now, hand)
        return self.last

    def _shot(self, take: LetterTake, target: str, data: bytes | None, prediction: Prediction, now: float,
              hand) -> str:
        label = top_predictions(prediction.probabilities, self.info["classes"], 1)[0]["label"]
        if label not in accepted_labels(target) and confident(self.info, prediction) and not take.keep_anyway:
            take.flagged = (data, prediction, label)
            return "flagged"
        take.flagged = None
        take.shots.append((data, prediction))
        self.last_shot = now
        if len(take.shots) >= CALIBRATION_SHOTS:
            self.phase, self.held_pose = "lower", hand
        return "shot"

    def keep(self, now: float) -> None:
        """Keep the flagged frame: the learner signs the letter this way (what calibration is for)."""
        target = self.target
        take = self.takes.get(target) if target else None
        if take is None or take.flagged is None:
            return
        data, prediction, _ = take.flagged
        take.flagged, take.keep_anyway = None, True
        take.shots.append((data, prediction))
        self.last_shot = now
        if len(take.shots) >= CALIBRATION_SHOTS:
            self.phase, self.held_pose = "lower", pose(prediction.hand)

    def _next_position(self) -> int:
        """The next letter not done yet, after the current one (then from the start); past the end when all are."""
        order = list(range(self.position + 1, len(self.letters))) + list(range(0, self.position))
        return next((i for i in order if not self.take(self.letters[i]).done), len(self.letters))

    def skip(self, now: float) -> None:
        """Drop the current letter: none of its frames are used."""
        if self.target is not None:
            self.takes[self.target] = LetterTake(skipped=True)
            self._go(self._next_position(), now)

    def redo(self, now: float, letter: str | None = None) -> None:
        """Forget ``letter``'s frames (the current one by default) and sign it again now."""
        letter = letter or self.target
        if letter in self.letters:
            self.takes[letter] = LetterTake()
            self._go(self.letters.index(letter), now)

    def labelled(self) -> tuple[list[tuple[str, bytes | None]], list[Prediction], list[tuple[str, Prediction]]]:
        """What ``build_profile`` takes: the shots, their answers, and the check frames."""
        shots = [(letter, data, prediction) for letter, take in self.takes.items() for data, prediction in take.shots]
        checks = [(letter, take.check[1]) for letter, take in self.takes.items() if take.check and take.shots]
        return [(letter, data) for letter, data, _ in shots], [prediction for _, _, prediction in shots], checks
