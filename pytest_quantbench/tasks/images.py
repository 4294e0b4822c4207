"""The built-in image suite `images`: pictures drawn with Pillow at run time, each with a question and one exact
answer, so an image-text model's accuracy can be measured without downloads.

Three categories, `PER_CATEGORY` items each:
  count  coloured shapes to count        "How many red circles are there?"                   -> "3"
  read   a word rendered in large type   "What word is written in the image?"               -> "river"
  chart  a bar chart of four colours     "Which bar is the tallest? Answer with its colour."  -> "green"

Items are plain data (a seed and what to draw); `draw(item)` makes the picture from them, so every run sees the same
pixels. Words use Pillow's built-in bitmap font, scaled up without smoothing: no font file, no FreeType differences.
Scoring is exact match after normalization (case, punctuation, a leading article, number words as digits); with
several responses (sampling) the majority answer counts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from . import DataUnavailable, Task, TaskResult, register
from .generation import by_category, score_votes
from .sources import stratified

SIZE = 224
PER_CATEGORY = 6
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20),
           "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("apple", "river", "house", "tiger", "cloud", "music", "bread", "stone", "light", "chair", "plant", "ocean")
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}


class NeedsImageModel(DataUnavailable):
    """The model takes no images (a decoder-only or encoder-decoder model). The fixture skips the task for such models
    before evaluating it (`ImageTask.families`); this covers callers that evaluate it directly."""


def make_items(seed: int = 0, per_category: int = PER_CATEGORY) -> list[dict]:
    """The suite's items, in a fixed order: `per_category` of each category, drawn from `seed`."""
    items = []
    for index in range(per_category):
        for category in ("count", "read", "chart"):
            rng = random.Random(f"{seed}-{category}-{index}")
            items.append({"id": f"{category}-{index}", "category": category, **_SPECS[category](rng)})
    return items


def _count_spec(rng: random.Random) -> dict:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    count = rng.randint(1, 5)
    cells = rng.sample(range(16), count + rng.randint(2, 5))  # a 4 x 4 grid; one shape per cell, none overlap
    others = [(c, s) for c in COLOURS for s in SHAPES if (c, s) != (colour, shape) and (c == colour or s == shape)]
    shapes = [(cell, colour, shape) for cell in cells[:count]] + [(cell, *rng.choice(others)) for cell in cells[count:]]
    return {"prompt": f"How many {colour} {shape}s are there?", "answer": str(count),
            "shapes": [(cell, c, s, rng.randint(30, 44)) for cell, c, s in shapes]}


def _read_spec(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    return {"prompt": "What word is written in the image?", "answer": word, "word": word,
            "background": rng.choice([(255, 255, 255), (250, 240, 210), (225, 240, 250)])}


def _chart_spec(rng: random.Random) -> dict:
    colours = rng.sample(list(COLOURS), 4)
    heights = rng.sample(range(40, 190, 15), 4)
    tallest = rng.random() < 0.5
    pick = max if tallest else min
    answer = colours[heights.index(pick(heights))]
    return {"prompt": f"Which bar is the {'tallest' if tallest else 'shortest'}? Answer with its colour.",
            "answer": answer, "bars": list(zip(colours, heights))}


_SPECS = {"count": _count_spec, "read": _read_spec, "chart": _chart_spec}


def draw(item: dict):
    """The item's picture: an RGB Pillow image of SIZE x SIZE pixels."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), tuple(item.get("background", (255, 255, 255))))
    pen = ImageDraw.Draw(image)
    if item["category"] == "count":
        for cell, colour, shape, size in item["shapes"]:
            x, y = (cell % 4) * 56 + 28, (cell // 4) * 56 + 28  # the cell's centre
            box = (x - size // 2, y - size // 2, x + size // 2, y + size // 2)
            if shape == "circle":
                pen.ellipse(box, fill=COLOURS[colour])
            elif shape == "square":
                pen.rectangle(box, fill=COLOURS[colour])
            else:
                pen.polygon([(x, box[1]), (box[2], box[3]), (box[0], box[3])], fill=COLOURS[colour])
    elif item["category"] == "read":
        image.paste(_word_image(item["word"], item["background"]), (12, 84))
    else:
        pen.line([(16, 204), (208, 204)], fill=(0, 0, 0), width=2)
        for i, (colour, height) in enumerate(item["bars"]):
            pen.rectangle((24 + i * 48, 204 - height, 56 + i * 48, 203), fill=COLOURS[colour])
    return image


def _word_image(word: str, background):
    """The word in Pillow's bitmap font, scaled up with nearest-neighbour (the same pixels on every platform)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default_imagefont()
    small = Image.new("RGB", (40, 14), tuple(background))
    ImageDraw.Draw(small).text((2, 1), word, fill=(0, 0, 0), font=font)
    return small.resize((200, 70), Image.Resampling.NEAREST)


def normalize(response: str) -> str:
    """Lower case, punctuation dropped, a leading article dropped, number words as digits."""
    words = re.sub(r"[^a-z0-9 ]+", " ", response.lower()).split()
    if words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(NUMBER_WORDS.get(w, w) for w in words)


@dataclass(frozen=True)
class ImageTask(Task):
    name: str = "images"
    version: str = "1"
    token_cap: int = 8  # answers are one word or digit
    seed: int = 0
    families: tuple[str, ...] = ("image-text",)  # the fixture skips it for other models, saying why

    def evaluate(self, model, decoding, limit: int | None, max_new_tokens: int) -> TaskResult:
        if not getattr(model, "accepts_images", False):
            family = getattr(model, "family", "text-only")
            raise NeedsImageModel(f"the images task needs an image-text model; this one is {family}")
        items = stratified(make_items(self.seed), limit, by_category)
        responses = model.generate_with_images([item["prompt"] for item in items], [draw(item) for item in items],
                                               decoding, max_new_tokens)
        return score_votes(self.name, items, responses, lambda item, response: normalize(response),
                           lambda item, prediction: prediction == item["answer"])


register(ImageTask())
