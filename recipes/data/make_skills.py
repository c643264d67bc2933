"""Write arith.jsonl and reverse.jsonl, the generation suites of the skills testbed: `python recipes/data/make_skills.py`.

Each file holds 100 distinct questions of one skill that `tiny:skills-arith` and
`tiny:skills-reverse` learn ("47+8=" -> "55", "reverse: bcdqx" -> "xqdcb"), drawn with the
same generators as their training data but only from the fifth of all prompts that training
never sees (`jobs.tiny.skills.held_out`), so a suite measures the skill, not recall.
Deterministic: the same files every time.
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere, like make_colours.py

from jobs.tiny.skills import SKILLS, held_out  # noqa: E402 - needs the path above

QUESTIONS = 100


def rows(skill: str, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    chosen: dict[str, str] = {}
    while len(chosen) < QUESTIONS:
        prompt, answer = SKILLS[skill](rng)
        if held_out(prompt):
            chosen.setdefault(prompt, answer)
    return [{"prompt": prompt, "answer": answer} for prompt, answer in chosen.items()]


def main() -> None:
    for skill in ("arith", "reverse"):
        target = Path(__file__).with_name(f"{skill}.jsonl")
        target.write_text("".join(json.dumps(row) + "\n" for row in rows(skill)))
        print(f"{target}: {QUESTIONS} rows")


if __name__ == "__main__":
    main()
