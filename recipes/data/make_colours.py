"""Write colours.jsonl, the synthetic dataset of recipes/tiny-finetune.yml: `python recipes/data/make_colours.py`.

Each row asks the colour of one of twenty things, for one of ten people, and
the answer names the thing and its colour ("The cat is red."). The colour is a fixed
function of the thing that no base model knows, and each question's words are ones a
`tiny:` model already reads, so a few hundred LoRA steps on a CPU take exact-match accuracy
on held-out questions from none to nearly all. Deterministic: the same file every time.
"""

import json
import random
from pathlib import Path

THINGS = "cat dog bird fish horse river tree house garden book window door table road city forest mountain child teacher farmer".split()
PEOPLE = "Anna Ben Clara David Emma Felix Grace Henry Ida Jonas".split()
COLOURS = "red green blue white black yellow".split()
PHRASINGS = ("{person} asks: what colour is the {thing}?",)


def rows(seed: int = 0) -> list[dict[str, list[dict[str, str]]]]:
    chats = []
    for phrasing in PHRASINGS:
        for person in PEOPLE:
            for index, thing in enumerate(THINGS):
                question = phrasing.format(person=person, thing=thing)
                answer = f"The {thing} is {COLOURS[index % len(COLOURS)]}."
                chats.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    random.Random(seed).shuffle(chats)
    return chats


def main() -> None:
    target = Path(__file__).with_name("colours.jsonl")
    target.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    print(f"{target}: {len(rows())} rows")


if __name__ == "__main__":
    main()
