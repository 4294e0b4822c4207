"""The built-in image suite: deterministic pictures that show their answers, and scoring on a scripted model."""

from __future__ import annotations

from collections import deque

import pytest

from pytest_quantbench.decoding import parse_decoding
from pytest_quantbench.tasks import DataUnavailable, TaskResult, get_task
from pytest_quantbench.tasks.images import COLOURS, SIZE, draw, make_items, normalize


def test_image_generation_is_deterministic_and_seeded():
    first = [draw(item).tobytes() for item in make_items()]
    again = [draw(item).tobytes() for item in make_items()]
    other = [draw(item).tobytes() for item in make_items(seed=1)]
    assert first == again and first != other
    assert len(first) == 18 and len(set(first)) == 18
    assert all(draw(item).size == (SIZE, SIZE) for item in make_items()[:3])


def _components(image, colour) -> int:
    """Connected regions of exactly `colour` (4-neighbour flood fill)."""
    width, height = image.size
    pixels = image.load()
    seen, count = set(), 0
    for start in ((x, y) for y in range(height) for x in range(width)):
        if start in seen or pixels[start] != colour:
            continue
        count += 1
        queue = deque([start])
        seen.add(start)
        while queue:
            x, y = queue.popleft()
            for nxt in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if 0 <= nxt[0] < width and 0 <= nxt[1] < height and nxt not in seen and pixels[nxt] == colour:
                    seen.add(nxt)
                    queue.append(nxt)
    return count


def test_images_show_their_answers():
    for item in make_items():
        image = draw(item)
        if item["category"] == "count":  # the target shapes, plus distractors of the same colour, other shape
            colour, shape = item["prompt"].split()[2], item["prompt"].split()[3].removesuffix("s")
            same_colour = [s for s in item["shapes"] if s[1] == colour]
            assert _components(image, COLOURS[colour]) == len(same_colour)
            assert sum(s[2] == shape for s in same_colour) == int(item["answer"])
        elif item["category"] == "chart":
            heights = {c: sum(image.getpixel((40 + i * 48, y)) == COLOURS[c] for y in range(SIZE))
                       for i, c in enumerate(c for c, _ in item["bars"])}
            pick = max if "tallest" in item["prompt"] else min
            assert pick(heights, key=heights.get) == item["answer"]
        else:
            dark = [x for x in range(SIZE) for y in range(SIZE) if image.getpixel((x, y)) == (0, 0, 0)]
            assert dark and max(dark) - min(dark) > 100  # a word in large type across the image


class ScriptedImageModel:
    """Answers from a script keyed by item id (found through the image it is shown)."""

    accepts_images = True

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.by_pixels = {draw(item).tobytes(): item["id"] for item in make_items()}
        self.seen: list[tuple[str, tuple[int, int]]] = []

    def generate_with_images(self, prompts, images, decoding, max_new_tokens):
        self.seen += [(p, image.size) for p, image in zip(prompts, images)]
        return [self.script[self.by_pixels[image.tobytes()]] for image in images]


def test_image_task_on_a_scripted_model():
    items = make_items()
    script = {item["id"]: [item["answer"]] for item in items}
    count = next(i for i in items if i["category"] == "count")
    word = next(i for i in items if i["category"] == "read")
    chart = [i for i in items if i["category"] == "chart"]
    number_word = ["zero", "one", "two", "three", "four", "five"][int(count["answer"])]
    script[count["id"]] = [f"{number_word.capitalize()}."]  # number words and punctuation normalize away
    script[word["id"]] = [f"The {word['answer'].upper()}"]
    script[chart[0]["id"]] = ["no idea"]
    script[chart[1]["id"]] = [f"{chart[1]['answer']} bar"]  # exact match: an extra word is wrong
    model = ScriptedImageModel(script)
    result = get_task("images").evaluate(model, parse_decoding("greedy"), None, 8)
    assert isinstance(result, TaskResult) and result.n == 18
    assert result.accuracy == pytest.approx(16 / 18)
    assert result.by_category == {"count": 1.0, "read": 1.0, "chart": pytest.approx(4 / 6)}
    assert all(size == (SIZE, SIZE) for _, size in model.seen)
    assert {p for p, _ in model.seen} >= {"What word is written in the image?"}
    limited = get_task("images").evaluate(model, parse_decoding("greedy"), 3, 8)
    assert [c for c in limited.by_category] == ["count", "read", "chart"] and limited.n == 3


def test_image_task_sampling_majority_and_text_only_models():
    item = make_items()[0]
    script = {i["id"]: [i["answer"]] * 20 for i in make_items()}
    script[item["id"]] = ["9"] * 11 + [item["answer"]] * 9  # most responses wrong: the item is wrong
    result = get_task("images").evaluate(ScriptedImageModel(script), parse_decoding("sample"), None, 8)
    assert result.correct[0] is False and result.metrics["response_accuracy"] == pytest.approx((360 - 11) / 360)
    assert normalize("  The Three! ") == "3" and normalize("An apple.") == "apple"

    class TextOnly:
        family = "encoder-decoder"

    with pytest.raises(DataUnavailable, match="needs an image-text model; this one is encoder-decoder"):
        get_task("images").evaluate(TextOnly(), parse_decoding("greedy"), None, 8)
