"""MovieLens-100k as click-through data with known false-positive clicks.

Every rating is a click; a rating <= 2 is a false positive (the gold, written to gold.csv,
which no pipeline node reads). Each click gets NEG sampled non-interactions of the same user
(seeded). Each user's clicks are split by time: the first 80% train, the next 10% dev, the
last 10% test; the fixed test keeps only clicks rated >= 4 and their negatives, so it is clean.

usage: make_ctr.py ML100K_DIR OUT_DIR USERS NEG SEED [--log]
  USERS: how many users (the lowest ids; 0 = all 943); NEG: negatives per click.
  --log: also write OUT_DIR/events.csv, the same rows as a behaviour log: every row an
  impression at the rating's time, every click a click event 3 s later, a `split` column.
Writes OUT_DIR/{train,dev,test}.csv (id, user_id, age, gender, occupation, item_id, title,
year, genres, click), OUT_DIR/gold.csv (id, rating, false_positive) and OUT_DIR/summary.json.
"""

import csv
import json
import os
import random
import sys


def read_tsv(path):
    with open(path, encoding="latin-1") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = [h.split(":")[0] for h in rows[0]]
    return [dict(zip(header, r)) for r in rows[1:] if r]


def main():
    src, out, users, neg, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    log = "--log" in sys.argv[6:]
    os.makedirs(out, exist_ok=True)
    people = {u["user_id"]: u for u in read_tsv(os.path.join(src, "ml-100k.user"))}
    items = {i["item_id"]: i for i in read_tsv(os.path.join(src, "ml-100k.item"))}
    keep = sorted(people, key=int)
    if users > 0:
        keep = keep[:users]
    keep = set(keep)
    by_user = {}
    for r in read_tsv(os.path.join(src, "ml-100k.inter")):
        if r["user_id"] in keep:
            by_user.setdefault(r["user_id"], []).append(r)
    all_items = sorted(items, key=int)
    rng = random.Random(seed)
    fields = ["id", "user_id", "age", "gender", "occupation", "item_id", "title", "year", "genres", "click"]
    splits = {s: [] for s in ("train", "dev", "test")}
    events = []
    gold = []

    def row(rid, u, item, click):
        p, it = people[u], items[item]
        return {
            "id": rid,
            "user_id": u,
            "age": p["age"],
            "gender": p["gender"],
            "occupation": p["occupation"],
            "item_id": item,
            "title": it.get("movie_title", "").strip() or f"item {item}",
            "year": it.get("release_year", "").strip() or "unknown",
            "genres": "|".join(it.get("class", "").split()) or "unknown",
            "click": click,
        }

    for u in sorted(by_user, key=int):
        rated = sorted(by_user[u], key=lambda r: (float(r["timestamp"]), int(r["item_id"])))
        # Negatives: items the user never rated, drawn without replacement (a heavy rater may
        # get fewer than NEG per click when the catalogue runs out).
        rated_ids = {r["item_id"] for r in rated}
        pool = [i for i in all_items if i not in rated_ids]
        rng.shuffle(pool)
        n = len(rated)
        cut_train, cut_dev = int(n * 0.8), int(n * 0.9)
        for k, r in enumerate(rated):
            split = "train" if k < cut_train else ("dev" if k < cut_dev else "test")
            rating = int(float(r["rating"]))
            if split == "test" and rating < 4:
                continue  # the fixed test is clean: only clicks rated 4 or 5
            rid = f"u{u}-i{r['item_id']}"
            splits[split].append(row(rid, u, r["item_id"], 1))
            t = int(float(r["timestamp"]))
            events.append(dict(row(rid, u, r["item_id"], 1), action="impression", timestamp=t, split=split))
            events.append(dict(row(rid, u, r["item_id"], 1), action="click", timestamp=t + 3, split=split))
            gold.append({"id": rid, "rating": rating, "false_positive": int(rating <= 2)})
            for _ in range(neg):
                if not pool:
                    break
                item = pool.pop()
                splits[split].append(row(f"u{u}-i{item}-n", u, item, 0))
                events.append(dict(row(f"u{u}-i{item}-n", u, item, 0), action="impression", timestamp=t, split=split))
    for name, rows in splits.items():
        with open(os.path.join(out, f"{name}.csv"), "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    if log:
        cols = [f for f in fields if f not in ("id", "click")] + ["action", "timestamp", "split"]
        with open(os.path.join(out, "events.csv"), "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(events)
    with open(os.path.join(out, "gold.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "rating", "false_positive"])
        w.writeheader()
        w.writerows(gold)
    train_ids = {r["id"] for r in splits["train"]}
    train_clicks = [g for g in gold if g["id"] in train_ids]
    summary = {
        "users": len(by_user),
        "rows": {k: len(v) for k, v in splits.items()},
        "clicks": {k: sum(r["click"] for r in v) for k, v in splits.items()},
        "train_false_positive_rate": sum(g["false_positive"] for g in train_clicks) / max(1, len(train_clicks)),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
