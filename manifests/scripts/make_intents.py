"""Generates a small, learnable intent dataset (train/dev/test JSONL + labels.yaml) with a fixed seed.

Train labels carry planted noise (each row keeps its true label in `true_label`); dev and test are clean.
Usage: make_intents.py OUT_DIR [TRAIN_ROWS] [NOISE]
"""
import json, os, random, sys

out = sys.argv[1]
n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
noise = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
rng = random.Random(13)
intents = {
    "card_lost": ("I lost my card or it was stolen", ["lost", "stolen", "missing", "cannot find"], ["card", "debit card", "credit card"]),
    "top_up": ("Adding money to the account", ["top up", "add money to", "load", "fund"], ["account", "wallet", "balance"]),
    "refund": ("Getting money back for a purchase", ["refund", "money back", "return", "reimburse"], ["order", "purchase", "payment"]),
    "exchange_rate": ("Currency conversion rates", ["exchange rate", "conversion rate", "fx rate", "currency rate"], ["euros", "dollars", "pounds"]),
    "pin_blocked": ("The PIN is blocked or forgotten", ["pin blocked", "forgot my pin", "pin locked", "wrong pin"], ["card", "atm", "machine"]),
    "transfer_failed": ("A bank transfer did not go through", ["transfer failed", "transfer declined", "payment bounced", "transfer rejected"], ["bank", "friend", "account"]),
}
fillers = ["please help", "what should I do", "urgent", "today", "again", "", "", "thanks"]
openers = ["hi", "hello", "hey", "", "", "excuse me"]
names = sorted(intents)

def sentence(label):
    _, verbs, objs = intents[label]
    parts = [rng.choice(openers), "my" if rng.random() < 0.5 else "the", rng.choice(objs), rng.choice(verbs), rng.choice(fillers)]
    if rng.random() < 0.5:
        parts = [rng.choice(openers), rng.choice(verbs), rng.choice(objs), rng.choice(fillers)]
    return " ".join(p for p in parts if p)

os.makedirs(out, exist_ok=True)
def write(name, n, noisy):
    with open(os.path.join(out, name), "w") as f:
        for i in range(n):
            true = rng.choice(names)
            given = rng.choice([l for l in names if l != true]) if noisy and rng.random() < noise else true
            f.write(json.dumps({"id": f"{name.split('.')[0]}-{i}", "text": sentence(true), "label": given, "true_label": true}) + "\n")
write("train.jsonl", n_train, True)
write("dev.jsonl", max(60, n_train // 5), False)
write("test.jsonl", max(60, n_train // 5), False)
with open(os.path.join(out, "labels.yaml"), "w") as f:
    f.write("labels:\n")
    for l in names:
        d, verbs, objs = intents[l]
        f.write(f"  - name: {l}\n    definition: {json.dumps(d)}\n    examples: [{json.dumps(verbs[0] + ' my ' + objs[0])}]\n")
