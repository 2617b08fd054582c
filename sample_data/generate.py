"""Generate bigrec's own sample data: a synthetic catalog and users whose tastes drift.

Run `python sample_data/generate.py` to rewrite `items.csv` and `events.csv` beside this file.
The output is a pure function of SEED, so the committed files can be checked against it.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SEED = 20261128
NUM_USERS = 300
NUM_ITEMS = 400
START_TIMESTAMP = 1_767_225_600  # 2026-01-01T00:00:00Z

TOPICS: dict[str, list[str]] = {
    "space": ["rocket", "orbit", "planet", "galaxy", "astronaut", "telescope", "mars", "comet"],
    "cooking": ["recipe", "kitchen", "bread", "spice", "chef", "pasta", "oven", "flavor"],
    "football": ["goal", "league", "striker", "stadium", "coach", "match", "penalty", "derby"],
    "jazz": ["saxophone", "swing", "trumpet", "blues", "improvisation", "quartet", "bebop", "groove"],
    "gardening": ["garden", "soil", "seed", "flower", "compost", "tomato", "rose", "harvest"],
    "finance": ["stock", "market", "bond", "investor", "budget", "dividend", "inflation", "bank"],
    "history": ["empire", "war", "ancient", "castle", "king", "revolution", "medieval", "dynasty"],
    "programming": ["python", "compiler", "database", "algorithm", "debugging", "software", "code", "server"],
    "travel": ["journey", "island", "mountain", "passport", "beach", "hotel", "train", "city"],
    "fitness": ["workout", "running", "muscle", "yoga", "marathon", "strength", "cardio", "stretch"],
    "photography": ["camera", "lens", "portrait", "exposure", "light", "film", "landscape", "shutter"],
    "ocean": ["whale", "reef", "coral", "diving", "shark", "tide", "sailor", "wave"],
}
FORMATS = ["guide", "story", "podcast", "documentary", "course", "review", "interview", "notes"]
ADJECTIVES = ["hidden", "modern", "classic", "quick", "deep", "little", "great", "secret", "wild", "simple"]
FILLER = ["about", "with", "and", "the", "for", "from", "into", "of", "a", "on", "in", "new", "best"]


def make_items(rng: random.Random) -> list[dict[str, str]]:
    """Return NUM_ITEMS items spread evenly over the topics, each with a title and a description."""
    topic_names = list(TOPICS)
    items = []
    for index in range(NUM_ITEMS):
        topic = topic_names[index % len(topic_names)]
        words = TOPICS[topic]
        title = f"The {rng.choice(ADJECTIVES)} {rng.choice(words)} {rng.choice(FORMATS)}"
        body = [rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(rng.randint(8, 16))]
        items.append(
            {
                "item_id": f"i{index:04d}",
                "title": title,
                "description": " ".join(body) + ".",
                "topic": topic,
            }
        )
    return items


def make_events(rng: random.Random, items: list[dict[str, str]]) -> list[dict[str, object]]:
    """Return events of NUM_USERS users who follow one topic, then drift to a neighbouring one."""
    topic_names = list(TOPICS)
    by_topic: dict[str, list[str]] = {name: [] for name in topic_names}
    for item in items:
        by_topic[item["topic"]].append(item["item_id"])
    # A few items per topic are hits: popularity alone explains part of the data, not all of it.
    popularity = {item["item_id"]: 1.0 / (1 + (int(item["item_id"][1:]) // 12) % 9) for item in items}
    all_items = [item["item_id"] for item in items]
    events: list[dict[str, object]] = []
    for user_index in range(NUM_USERS):
        user_id = f"u{user_index:04d}"
        first = rng.randrange(len(topic_names))
        second = (first + rng.choice([1, -1, 5])) % len(topic_names)
        num_events = rng.randint(12, 60)
        timestamp = START_TIMESTAMP + rng.randrange(86_400 * 30)
        seen: set[str] = set()
        for step in range(num_events):
            drift = step / max(num_events - 1, 1)
            if rng.random() < 0.12:
                candidates = all_items
            else:
                topic = topic_names[second] if rng.random() < drift else topic_names[first]
                candidates = by_topic[topic]
            pool = [item_id for item_id in candidates if item_id not in seen] or all_items
            weights = [popularity[item_id] for item_id in pool]
            item_id = rng.choices(pool, weights=weights, k=1)[0]
            seen.add(item_id)
            timestamp += rng.randint(60, 86_400)
            events.append(
                {
                    "user_id": user_id,
                    "item_id": item_id,
                    "timestamp": timestamp,
                    "event": rng.choice(["view", "view", "view", "click", "purchase"]),
                }
            )
    events.sort(key=lambda row: (row["timestamp"], row["user_id"]))
    return events


def main() -> None:
    """Write items.csv and events.csv next to this script."""
    rng = random.Random(SEED)
    items = make_items(rng)
    events = make_events(rng, items)
    here = Path(__file__).resolve().parent
    with open(here / "items.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "title", "description", "topic"])
        writer.writeheader()
        writer.writerows(items)
    with open(here / "events.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["user_id", "item_id", "timestamp", "event"])
        writer.writeheader()
        writer.writerows(events)
    print(f"wrote {len(items)} items and {len(events)} events to {here}")


if __name__ == "__main__":
    main()
