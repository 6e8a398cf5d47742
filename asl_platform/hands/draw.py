"""The hand as the demo shows it: MediaPipe's 21-point skeleton and the hand box over the photo."""

from __future__ import annotations

from PIL import Image, ImageDraw

# MediaPipe Hands' connections (mediapipe.solutions.hands.HAND_CONNECTIONS), spelled out so that
# drawing needs no MediaPipe import.
HAND_CONNECTIONS = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11), (11, 12),
    (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17), (17, 18), (18, 19), (19, 20),
)
BONE, JOINT, BOX = (0, 230, 118), (255, 255, 255), (255, 196, 0)


def draw_hand(image: Image.Image, hand: dict | None) -> Image.Image:
    """A copy of ``image`` with the hand block of a prediction (``Hand.to_json``) drawn on it; the
    image unchanged (as a copy) when no hand was found."""
    out = image.convert("RGB").copy()
    if not hand or not hand.get("found"):
        return out
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 160))
    x0, y0, x1, y1 = hand["box"]
    draw.rectangle((x0, y0, x1, y1), outline=BOX, width=width)
    points = [(float(p[0]), float(p[1])) for p in hand["landmarks"]]
    for a, b in HAND_CONNECTIONS:
        draw.line((points[a], points[b]), fill=BONE, width=width)
    radius = width + 1
    for x, y in points:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=JOINT, outline=BONE)
    return out
