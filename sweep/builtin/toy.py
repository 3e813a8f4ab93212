"""The built-in `toy` task: a synthetic preference task with a known gold reward.

A prompt asks for a short text about named topics. There are twelve topics ("ocean", "music", "farm",
...), each with ten words of its own (ocean: wave, tide, reef, ...), and twenty filler words ("the",
"very", "nice", ...). Responses are lists of words written in one fixed word order (the task's stand-in
for grammar). The gold reward scores what a reader asked for: +1 for each distinct word of a named topic,
+1 for each named topic the response touches, -1 for each word of a topic nobody asked about, -0.5 for
each repeated word and -0.05 per word, so filler earns nothing and length only pays when it is on topic.

The data imitate how preference data are made:

- SFT demonstrations (prompt, completion) are mediocre on purpose: half their words on topic, a few off
  topic, the rest filler. They cover both kinds of request below, like a general instruction-tuned model,
  and leave preference training room to improve.
- Preference pairs hold two responses of varied quality and length: some stutter (repeat a few words),
  some degenerate into loops, and in some the second response was written for another request (an
  off-topic negative). Simulated annotators label them following the gold reward with Bradley–Terry noise,
  P(a preferred to b) = sigmoid((u(a) - u(b)) / T), where u is the gold reward plus `length_bias` per
  word: like human raters they favour longer responses, so a policy can learn to exploit length.
- Training pairs (what sweep trials learn from) ask about one or two topics in short wordings ("write
  about ocean and music :"). The out-of-distribution evaluation prompts ask about three topics in other,
  longer wordings ("please describe ocean , music and farm in your own words :"): the train/evaluate split
  of "A Practical Analysis of Human Alignment with *PO" (arXiv 2407.15229). Each evaluation prompt comes
  with a reference response, a fairly good one. The judge's own pairs cover both kinds of request.

Everything is generated from a seed with Python's `random`, so a seed always gives the same task.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

TOPICS: dict[str, tuple[str, ...]] = {
    name: tuple(words.split())
    for name, words in {
        "ocean": "wave tide salt shore reef fish coral boat sand whale",
        "forest": "tree moss leaf pine oak fern owl bark root deer",
        "music": "song drum guitar melody rhythm piano chord singer violin beat",
        "space": "star planet orbit rocket moon comet galaxy nebula astronaut meteor",
        "cooking": "oven pan spice garlic bread soup knife recipe flour butter",
        "sport": "ball goal team match coach stadium runner score referee medal",
        "city": "street tower bus traffic bridge subway market crowd taxi alley",
        "weather": "rain cloud storm thunder snow wind fog sunshine frost breeze",
        "farm": "cow barn tractor wheat hay goat harvest field chicken fence",
        "computer": "code keyboard screen bug server chip mouse pixel software laptop",
        "medicine": "doctor nurse pill fever hospital vaccine injury bandage clinic surgery",
        "travel": "ticket luggage passport hotel map airport journey tourist train suitcase",
    }.items()
}
FILLER = ("the", "a", "very", "really", "so", "just", "some", "thing", "stuff", "nice", "good", "great",
          "many", "also", "quite", "lots", "kind", "it", "is", "we")  # fmt: skip
TRAIN_TEMPLATES = ("write about {} :", "tell me about {} :", "a text on {} :")
EVAL_TEMPLATES = ("please describe {} in your own words :", "i would like to read something that covers {} :")

LOOP_RATE = 0.15  # fraction of pair responses that degenerate into loops (a word repeated many times)
STUTTER_RATE = 0.2  # fraction of pair responses that repeat some of their words once
TOPIC_OF_WORD = {word: topic for topic, words in TOPICS.items() for word in words}
_WORD_ORDER = [*TOPIC_OF_WORD, *FILLER]
random.Random("posweep-toy-word-order").shuffle(_WORD_ORDER)
WORD_RANK = {word: rank for rank, word in enumerate(_WORD_ORDER)}
"""Responses list their words in this one fixed order, the task's stand-in for grammar."""
_FILLER_WEIGHTS = [rank**-0.5 for rank in range(1, len(FILLER) + 1)]  # a few filler words are the most common


@dataclass(frozen=True)
class ToySettings:
    """Size and annotator model of the synthetic task; every field changes the generated data."""

    seed: int = 0
    """Seed of every random choice."""
    n_sft: int = 2000
    """SFT demonstrations (prompt, completion)."""
    n_train_pairs: int = 1024
    """Preference pairs that sweep trials train on."""
    n_rm_pairs: int = 2048
    """Held-out preference pairs for the reward-model judge (never seen by trials)."""
    n_eval: int = 128
    """Out-of-distribution evaluation prompts, each with a reference response."""
    annotator_temperature: float = 1.0
    """Bradley–Terry noise of the simulated annotators, in gold-reward units (0 = no noise)."""
    length_bias: float = 0.15
    """Annotator utility bonus per response word (0 = unbiased annotators)."""
    off_prompt_rate: float = 0.3
    """Fraction of pairs whose second response was written for another request (an off-topic negative)."""


def vocabulary() -> list[str]:
    """Every word the task can produce, prompts and responses, in a fixed order."""
    words = [*TOPICS, *TOPIC_OF_WORD, *FILLER, "and", ","]
    for template in TRAIN_TEMPLATES + EVAL_TEMPLATES:
        words += template.replace("{}", " ").split()
    return list(dict.fromkeys(words))


def named_topics(prompt: str) -> list[str]:
    """The topics a prompt asks for, in order of mention."""
    return [word for word in prompt.lower().split() if word in TOPICS]


def gold_reward(prompts: list, responses: list[str]) -> list[float]:
    """The task's true reward of each (prompt, response); prompts are plain strings as in the data files."""
    return [
        _gold(named_topics(prompt), response) for prompt, response in zip(prompts, responses, strict=True)
    ]


def _gold(topics: list[str], response: str) -> float:
    """The gold reward of a response to a request for `topics` (see the module docstring)."""
    words = response.lower().split()
    on_topic = {word for word in words if TOPIC_OF_WORD.get(word) in topics}
    covered = {TOPIC_OF_WORD[word] for word in on_topic}
    off_topic = sum(1 for word in words if word in TOPIC_OF_WORD and TOPIC_OF_WORD[word] not in topics)
    repeats = len(words) - len(set(words))
    return len(on_topic) + len(covered) - off_topic - 0.5 * repeats - 0.05 * len(words)


def _prompt(rng: random.Random, topics: list[str], templates: tuple[str, ...]) -> str:
    listed = " and ".join(topics) if len(topics) < 3 else " , ".join(topics[:-1]) + " and " + topics[-1]
    return rng.choice(templates).format(listed)


def train_prompt(rng: random.Random) -> str:
    """A prompt from the training distribution: one or two topics, short wording."""
    return _prompt(rng, rng.sample(list(TOPICS), rng.choice((1, 2))), TRAIN_TEMPLATES)


def eval_prompt(rng: random.Random) -> str:
    """A prompt from the out-of-distribution evaluation set: three topics, longer wordings no training pair
    uses."""
    return _prompt(rng, rng.sample(list(TOPICS), 3), EVAL_TEMPLATES)


def sample_response(rng: random.Random, prompt: str, on_topic: float, off_topic: float, length: int) -> str:
    """A response of `length` distinct words in `WORD_RANK` order, each on topic with probability `on_topic`,
    off topic with `off_topic`, filler otherwise (so the two must sum to less than 1)."""
    if not on_topic + off_topic < 1:
        raise ValueError(
            f"on_topic + off_topic must be below 1 to leave room for filler, got {on_topic + off_topic}"
        )
    topics = named_topics(prompt)
    others = [topic for topic in TOPICS if topic not in topics]
    words: list[str] = []
    while len(words) < length:
        draw = rng.random()
        if draw < on_topic:
            word = rng.choice(TOPICS[rng.choice(topics)])
        elif draw < on_topic + off_topic:
            word = rng.choice(TOPICS[rng.choice(others)])
        else:
            word = rng.choices(FILLER, weights=_FILLER_WEIGHTS)[0]
        if word not in words:
            words.append(word)
    return " ".join(sorted(words, key=WORD_RANK.__getitem__))


def _mediocre_response(rng: random.Random, prompt: str) -> str:
    return sample_response(rng, prompt, on_topic=0.5, off_topic=0.05, length=rng.randint(4, 12))


def varied_response(rng: random.Random, prompt: str) -> str:
    """A response of random quality and length, as in the preference pairs: some stutter, a few loop."""
    on_topic = rng.uniform(0.05, 0.8)
    off_topic = rng.uniform(0.0, 0.9 - on_topic) / 2
    kind = rng.random()
    if kind < LOOP_RATE:
        words = sample_response(rng, prompt, on_topic, off_topic, rng.randint(1, 4)).split()
        return " ".join(repeat for word in words for repeat in [word] * rng.randint(2, 10))
    words = sample_response(rng, prompt, on_topic, off_topic, rng.randint(2, 16)).split()
    if kind < LOOP_RATE + STUTTER_RATE:
        words = [repeat for word in words for repeat in [word] * (1 + (rng.random() < 0.3))]
    return " ".join(words)


def off_prompt_response(rng: random.Random, prompt: str) -> str:
    """A response written for another request, about as many topics but none of the prompt's."""
    topics = named_topics(prompt)
    others = rng.sample([topic for topic in TOPICS if topic not in topics], len(topics))
    return varied_response(rng, _prompt(rng, others, TRAIN_TEMPLATES))


def annotate(
    rng: random.Random, prompt: str, first: str, second: str, settings: ToySettings
) -> tuple[str, str]:
    """A simulated annotator's (chosen, rejected) for two responses: gold reward + length bias + BT noise."""
    margin = _gold(named_topics(prompt), first) - _gold(named_topics(prompt), second)
    margin += settings.length_bias * (len(first.split()) - len(second.split()))
    if settings.annotator_temperature == 0:
        prefer_first = margin > 0 or (margin == 0 and rng.random() < 0.5)
    else:
        prefer_first = rng.random() < 1.0 / (1.0 + math.exp(-margin / settings.annotator_temperature))
    return (first, second) if prefer_first else (second, first)


def preference_pairs(
    rng: random.Random,
    count: int,
    settings: ToySettings,
    prompt_kinds: tuple[Callable, ...] = (train_prompt,),
) -> list[dict]:
    """`count` annotated pairs on prompts of the given kinds: rows prompt, chosen, rejected."""
    rows = []
    for _ in range(count):
        prompt = rng.choice(prompt_kinds)(rng)
        first = varied_response(rng, prompt)
        second = (off_prompt_response if rng.random() < settings.off_prompt_rate else varied_response)(
            rng, prompt
        )
        chosen, rejected = annotate(rng, prompt, first, second, settings)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def make_task(settings: ToySettings) -> dict[str, list[dict]]:
    """The task's data: `sft` (prompt, completion), `train` and `rm` pairs, `eval` (prompt, chosen)."""

    def stream(name: str) -> random.Random:
        return random.Random(f"posweep-toy-{settings.seed}-{name}")

    sft_rng, eval_rng = stream("sft"), stream("eval")
    sft = []
    for _ in range(settings.n_sft):
        prompt = sft_rng.choice((train_prompt, eval_prompt))(sft_rng)
        sft.append({"prompt": prompt, "completion": _mediocre_response(sft_rng, prompt)})
    evaluation = []
    for _ in range(settings.n_eval):
        prompt = eval_prompt(eval_rng)
        reference = sample_response(
            eval_rng, prompt, on_topic=0.6, off_topic=0.05, length=eval_rng.randint(5, 10)
        )
        evaluation.append({"prompt": prompt, "chosen": reference})
    return {
        "sft": sft,
        "train": preference_pairs(stream("train"), settings.n_train_pairs, settings),
        "rm": preference_pairs(stream("rm"), settings.n_rm_pairs, settings, (train_prompt, eval_prompt)),
        "eval": evaluation,
    }
