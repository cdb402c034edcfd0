"""Generates intent texts labelled by five simulated annotators of different reliability (one
careless), as a wide CSV (item, text, a1..a5; empty = no vote), plus labels.yaml. Fixed seed.
Usage: make_votes.py OUT_DIR [ITEMS]
"""
import json, os, random, sys

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
rng = random.Random(17)
intents = {
    "card_lost": ("I lost my card or it was stolen", ["lost", "stolen", "cannot find"], ["card", "debit card"]),
    "refund": ("Getting money back for a purchase", ["refund", "money back", "return"], ["order", "purchase"]),
    "top_up": ("Adding money to the account", ["top up", "add money to", "fund"], ["account", "wallet"]),
    "pin_blocked": ("The PIN is blocked or forgotten", ["pin blocked", "forgot my pin", "wrong pin"], ["card", "atm"]),
}
names = sorted(intents)
accuracy = [0.9, 0.85, 0.75, 0.7, 0.4]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "votes.csv"), "w") as f:
    f.write("item,text," + ",".join(f"a{i + 1}" for i in range(len(accuracy))) + "\n")
    for i in range(n):
        y = rng.choice(names)
        _, verbs, objs = intents[y]
        text = f"{rng.choice(['hi', 'hello', ''])} {rng.choice(verbs)} my {rng.choice(objs)}".strip()
        votes = []
        for p in accuracy:
            if rng.random() < 0.3:
                votes.append("")
            else:
                votes.append(y if rng.random() < p else rng.choice([l for l in names if l != y]))
        f.write(f"v{i},{text}," + ",".join(votes) + "\n")
with open(os.path.join(out, "labels.yaml"), "w") as f:
    f.write("labels:\n")
    for l in names:
        f.write(f"  - name: {l}\n    definition: {json.dumps(intents[l][0])}\n")
