"""Task candidates for a real base: arithmetic a 135M chat model can partly solve, so GRPO gets a reward signal.

Each candidate is a seeded generator of problems with exact integer answers; `make_splits` draws disjoint
train / test / probe splits (no question text in two splits). The prompt is the question plus an instruction
(`INSTRUCTIONS`) that asks for the rewarded format: one \\boxed{answer} (DeepSeek-R1 / Qwen2.5-Math's evaluation
prompt, answer format `boxed`), or reasoning in <think></think> and then one \\boxed{answer} (`think_boxed`).
Which candidate and instruction the study uses was measured (`tina-probe lab real-task --measure`, numbers in
data/real/<base>.measure.json and the base's model card).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tina_probe.errors import TinaError

DATA = Path(__file__).resolve().parents[2] / "data" / "real"

NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jack", "Lena", "Omar",
         "Priya", "Sam", "Tom", "Zoe")
ITEMS = ("apples", "books", "marbles", "stickers", "pencils", "cookies", "coins", "cards", "shells", "stamps")
BOXES = ("bags", "boxes", "jars", "packs", "baskets")

# How the prompt asks for the rewarded format. `think_box` says it; `think_box_example` also shows it once; `boxed`
# is the DeepSeek-R1 / Qwen2.5-Math evaluation instruction (data/benchmarks.yaml's `boxed` template). Under `box` the
# base's only well-formatted answers were the instruction's empty `\boxed{}` copied, so `box_number`, `box_example`
# and `box_worked` ask for a number in the box, the last two with an example of one.
INSTRUCTIONS = {
    "boxed": "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "box": "{question}\nPut your final answer within \\boxed{{}}.",
    "box_number": "{question}\nPut your final answer, a single number, within \\boxed{{}}.",
    # the examples' numbers lie outside every candidate's answers, so copying an example is never right by chance
    "box_example": "{question}\nPut your final answer within \\boxed{{}}, for example \\boxed{{100}}.",
    "box_worked": "{question}\nGive the result as a number in \\boxed{{}}. Example: What is 30 + 40? 30 + 40 = 70, so "
                  "the answer is \\boxed{{70}}.",
    "think_box": "{question}\nThink step by step inside <think> </think> tags, then give the final answer "
                 "as \\boxed{{number}}.",
    "think_box_example": "{question}\nFirst think inside <think> </think> tags, then write only the final answer "
                         "in \\boxed{{}}. For example: <think>2 + 2 = 4</think> \\boxed{{4}}",
}


@dataclass(frozen=True)
class RealProblem:
    """One problem: the question, its exact answer, the candidate task it came from and its number of steps."""

    id: str
    question: str
    answer: str
    task: str
    n_steps: int

    def to_row(self) -> dict:
        return asdict(self)


def _arith_digits(rng: random.Random) -> tuple[str, int, int]:
    a, b, op = rng.randint(2, 20), rng.randint(2, 20), rng.choice("+-*")
    if op == "-" and b > a:
        a, b = b, a
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"What is {a} {op} {b}?", value, 1


def _arith_words(rng: random.Random) -> tuple[str, int, int]:
    a, b, op = rng.randint(2, 20), rng.randint(2, 20), rng.choice(("plus", "minus"))
    if op == "minus" and b > a:
        a, b = b, a
    value = a + b if op == "plus" else a - b
    return f"What is {NUMBER_WORDS[a]} {op} {NUMBER_WORDS[b]}?", value, 1


def _add_small(rng: random.Random) -> tuple[str, int, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {a} + {b}?", a + b, 1


def _story_step(rng: random.Random, name: str, item: str, have: int) -> tuple[str, int]:
    """One sentence that changes how many `item`s `name` has (a gain, a loss, or filled containers)."""
    kind = rng.choice(("gain", "loss", "groups"))
    if kind == "gain":
        b = rng.randint(2, 12)
        return f"{name} gets {b} more {item}.", have + b
    if kind == "loss" and have > 3:
        b = rng.randint(2, have - 1)
        return f"{name} gives {b} {item} to a friend.", have - b
    k, per = rng.randint(2, 4), rng.randint(2, 5)
    return f"Then {name} buys {k} {rng.choice(BOXES)} with {per} {item} in each.", have + k * per


def _story(rng: random.Random, n_steps: int) -> tuple[str, int, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    have = rng.randint(2, 15)
    sentences = [f"{name} has {have} {item}."]
    for _ in range(n_steps):
        text, have = _story_step(rng, name, item, have)
        sentences.append(text)
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), have, n_steps


def _lab_level1(rng: random.Random) -> tuple[str, int, int]:
    from tina_probe.lab.tasks import LEVELS, make_problem

    p = make_problem(rng, LEVELS[1], "x")
    return p.question, int(p.answer), len(p.steps)


@dataclass(frozen=True)
class TaskCandidate:
    """A candidate task: a name, what it is in a few words, and its seeded problem generator."""

    name: str
    what: str
    draw: Callable[[random.Random], tuple[str, int, int]]


CANDIDATES = {
    c.name: c for c in (
        TaskCandidate("add-small", "a + b, one digit each", _add_small),
        TaskCandidate("arith1-digits", "one operation (+, -, x) on numbers up to 20, in digits", _arith_digits),
        TaskCandidate("arith1-words", "one + or - on numbers up to 20, written in words", _arith_words),
        TaskCandidate("story1", "a one-step word problem (gain, loss or filled containers)",
                      lambda rng: _story(rng, 1)),
        TaskCandidate("story2", "a two-step word problem", lambda rng: _story(rng, 2)),
        TaskCandidate("lab-level1", "the lab's level-1 arithmetic (2-3 operations on 1-9)", _lab_level1),
    )
}


def candidate(name: str) -> TaskCandidate:
    if name not in CANDIDATES:
        raise TinaError(f"{name}: unknown task candidate (known: {', '.join(CANDIDATES)})")
    return CANDIDATES[name]


@dataclass(frozen=True)
class SplitSizes:
    train: int = 1000
    test: int = 200
    probe: int = 100


def make_splits(task: str, *, seed: int = 0, sizes: SplitSizes = SplitSizes()) -> dict[str, list[RealProblem]]:
    """Disjoint test / probe / train splits of a candidate task (a question appears in one split only), seeded."""
    cand = candidate(task)
    rng = random.Random(f"{task}/{seed}")
    seen: set[str] = set()
    out: dict[str, list[RealProblem]] = {}
    for split, n in (("test", sizes.test), ("probe", sizes.probe), ("train", sizes.train)):
        rows: list[RealProblem] = []
        tries = 0
        while len(rows) < n:
            tries += 1
            if tries > 200 * n + 1000:
                raise TinaError(f"{task}: cannot draw {n} distinct {split} problems (the task has too few)")
            question, value, steps = cand.draw(rng)
            if question in seen:
                continue
            seen.add(question)
            rows.append(RealProblem(f"{task}-{split}-{len(rows):05d}", question, str(value), task, steps))
        out[split] = rows
    return out


# The answer format (formats.ANSWER_FORMATS) each instruction asks for: what its format reward and strict grade read.
INSTRUCTION_FORMATS = {"boxed": "boxed", "box": "boxed", "box_number": "boxed", "box_example": "boxed",
                       "box_worked": "boxed", "think_box": "think_boxed", "think_box_example": "think_boxed"}
# What an answer may be (grading.ANSWER_KINDS): a number written out. Every candidate's answer is an integer, and the
# arithmetic ones hold the expression in the question, which math-verify would evaluate to the gold if boxed.
REAL_ANSWER_KIND = "number"


def prompt_for(question: str, instruction: str) -> str:
    """The user message for a question: the question and the format instruction (INSTRUCTIONS name or template)."""
    template = INSTRUCTIONS.get(instruction, instruction)
    return template.format(question=question)


def write_splits(task: str, out_dir: Path, *, instruction: str, seed: int = 0,
                 sizes: SplitSizes = SplitSizes()) -> dict[str, Path]:
    """Write <out>/{train,test,probe}.jsonl: rows with id, question, answer, task, n_steps and the rendered `prompt`
    (question + instruction; the model's chat template adds the rest), atomically."""
    from tina_probe.store import atomic_write_text

    out_dir = Path(out_dir)
    written = {}
    for split, rows in make_splits(task, seed=seed, sizes=sizes).items():
        lines = [json.dumps(r.to_row() | {"prompt": prompt_for(r.question, instruction)}, sort_keys=True)
                 for r in rows]
        written[split] = atomic_write_text(out_dir / f"{split}.jsonl", "\n".join(lines) + "\n")
    return written


# The study's task and instruction, chosen by measurement (data/real/<base>.measure.json, the base's model card).
# With thinking tags asked for, no candidate was ever well formatted within 64 tokens (0 of 384 samples closed a
# </think>), so GRPO would have had no format signal; the study rewards the boxed answer format (one \\boxed{}
# answer). Graded as the study grades (a written number, a non-empty box; 32 x 4 samples at T=1), no instruction
# meets both targets: `box` (the earlier choice) gave lenient 14.1% and format 3.1% with no right answer in a box
# (its old 5.5% format was the instruction's empty box copied); `box_worked` gave lenient 10.9%, format 12.5% and the
# only right boxed answers (strict 2.3%), so GRPO sees both rewards. It misses the 15% lenient target.
CHOSEN_TASK = "arith1-digits"
CHOSEN_INSTRUCTION = "box_worked"
CHOSEN_SIZES = SplitSizes(train=300, test=150, probe=100)  # the task has ~615 distinct problems


def write_task_data(out_dir: Path = DATA) -> dict[str, Path]:
    """The shipped splits of the chosen task (data/real/{train,test,probe}.jsonl)."""
    return write_splits(CHOSEN_TASK, out_dir, instruction=CHOSEN_INSTRUCTION, sizes=CHOSEN_SIZES)
