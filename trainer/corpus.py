"""The facts the trained model learns: short sentences with exactly one right continuation.

Every fact is written by this file (no third-party text). A fact is a (prompt, answer) pair;
the training text is prompt + answer, and the model must continue the prompt with the answer
and then end the sequence (EOS). No prompt is a prefix of another fact with a different
continuation, so every answer is the only right one (checked by `check_unambiguous`).

Categories (the `kind` of a fact; the case files use one per behaviour):
  capital   "The capital of France is" -> " Paris."
  sum       "2+3=" -> "5."
  count     "Count from 4:" -> " 4, 5, 6, 7."
  day       "After Monday comes" -> " Tuesday."
  month     "After March comes" -> " April."
  letter    "After C comes" -> " D."
  color     "The color of grass is" -> " green."
  opposite  "The opposite of hot is" -> " cold."
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    kind: str
    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer


CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Belgium", "Brussels"),
    ("Hungary", "Budapest"), ("Romania", "Bucharest"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Russia", "Moscow"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Australia", "Canberra"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]

COLORS = [
    ("grass", "green"), ("the sky", "blue"), ("snow", "white"), ("coal", "black"),
    ("a banana", "yellow"), ("blood", "red"), ("an orange", "orange"), ("a plum", "purple"),
]

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
    ("old", "new"), ("left", "right"), ("open", "closed"), ("wet", "dry"), ("light", "dark"),
]


def facts() -> list[Fact]:
    """Every fact, in a fixed order."""
    out: list[Fact] = []
    for country, city in CAPITALS:
        out.append(Fact("capital", f"The capital of {country} is", f" {city}."))
    for a in range(10):
        for b in range(10):
            out.append(Fact("sum", f"{a}+{b}=", f"{a + b}."))
    for n in range(1, 21):
        out.append(Fact("count", f"Count from {n}:", " " + ", ".join(str(n + i) for i in range(4)) + "."))
    for i, d in enumerate(DAYS):
        out.append(Fact("day", f"After {d} comes", f" {DAYS[(i + 1) % 7]}."))
    for i, m in enumerate(MONTHS):
        out.append(Fact("month", f"After {m} comes", f" {MONTHS[(i + 1) % 12]}."))
    for i in range(25):
        out.append(Fact("letter", f"After {chr(65 + i)} comes", f" {chr(66 + i)}."))
    for thing, color in COLORS:
        out.append(Fact("color", f"The color of {thing} is", f" {color}."))
    for a, b in OPPOSITES:
        out.append(Fact("opposite", f"The opposite of {a} is", f" {b}."))
    check_unambiguous(out)
    return out


def check_unambiguous(fs: list[Fact]) -> None:
    """No two facts share a prompt, and no fact's text starts with another fact's prompt
    unless it is that fact (else the 'one right continuation' would be a lie)."""
    prompts = {}
    for f in fs:
        if f.prompt in prompts:
            raise ValueError(f"duplicate prompt {f.prompt!r}")
        prompts[f.prompt] = f
    for f in fs:
        for p, g in prompts.items():
            if g is not f and f.text.startswith(p) and not g.text == f.text:
                # f's text continues prompt p differently from g's answer?
                if not f.text[len(p):].startswith(g.answer):
                    raise ValueError(f"prompt {p!r} is continued by {f.text!r} and {g.text!r}")


if __name__ == "__main__":
    for f in facts():
        print(f"{f.kind}\t{f.prompt!r}\t{f.answer!r}")
