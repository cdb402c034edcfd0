"""Writes a small synthetic labelled dataset (JSONL) with a fixed seed, some labels flipped."""
import json, random, sys

out, n, noise = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(7)
words = {"billing": ["invoice", "charge", "refund", "payment"], "shipping": ["parcel", "courier", "delivery", "tracking"]}
with open(out, "w") as f:
    for i in range(n):
        label = rng.choice(sorted(words))
        text = " ".join(rng.choice(words[label]) for _ in range(4))
        given = label if rng.random() > noise else next(l for l in words if l != label)
        f.write(json.dumps({"id": i, "text": text, "label": given, "true": label}) + "\n")
