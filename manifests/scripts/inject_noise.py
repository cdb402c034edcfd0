"""Banking77 with planted label noise, for the demo: reads SRC/{train,dev,test}.tsv (text<TAB>label),
flips NOISE of the train labels to a uniformly random other label (fixed seed; each row keeps its
clean label in `true_label`), leaves dev and test clean, and writes OUT/{train,dev,test}.jsonl and
OUT/labels.yaml (each label's name spelled out as its definition).
Usage: inject_noise.py SRC OUT NOISE [TRAIN_ROWS]
"""
import csv, json, os, random, sys

src, out, noise = sys.argv[1], sys.argv[2], float(sys.argv[3])
limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
rng = random.Random(77)

def rows(name):
    with open(os.path.join(src, name + ".tsv"), newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        return [(x[0], x[-1]) for x in r if len(x) >= 2]

train, dev, test = rows("train"), rows("dev"), rows("test")
if limit:
    rng.shuffle(train)
    train = train[:limit]
labels = sorted({l for _, l in train + dev + test})
os.makedirs(out, exist_ok=True)
flipped = 0
with open(os.path.join(out, "train.jsonl"), "w") as f:
    for i, (t, l) in enumerate(train):
        given = l
        if rng.random() < noise:
            given = rng.choice([x for x in labels if x != l])
            flipped += 1
        f.write(json.dumps({"id": f"train-{i}", "text": t, "label": given, "true_label": l}) + "\n")
for name, part in [("dev", dev), ("test", test)]:
    with open(os.path.join(out, name + ".jsonl"), "w") as f:
        for i, (t, l) in enumerate(part):
            f.write(json.dumps({"id": f"{name}-{i}", "text": t, "label": l}) + "\n")
with open(os.path.join(out, "labels.yaml"), "w") as f:
    f.write("labels:\n")
    for l in labels:
        f.write(f"  - name: {l}\n    definition: {json.dumps('The customer asks about: ' + l.replace('_', ' '))}\n")
print(f"{flipped} of {len(train)} train labels flipped", file=sys.stderr)
