"""Banking77 with planted label noise, for the demo and the quality benchmark: reads
SRC/{train,dev,test}.tsv (text<TAB>label), flips NOISE of the train labels (fixed seed; each row
keeps its clean label in `true_label`), leaves dev and test clean, and writes
OUT/{train,dev,test}.jsonl and OUT/labels.yaml (each label's name spelled out as its definition).
KIND `uniform` (default) flips to a uniformly random other label; `confusable` flips to the label
a model trained on the clean labels confuses the row's class with most, read from EVALUATION (an
evaluator's JSON with out-of-sample `train` scores: confusion[given][predicted] and `labels`).
Usage: inject_noise.py SRC OUT NOISE [TRAIN_ROWS [KIND [EVALUATION]]]
"""
import csv, json, os, random, sys

src, out, noise = sys.argv[1], sys.argv[2], float(sys.argv[3])
limit = int(sys.argv[4]) if len(sys.argv) > 4 and int(sys.argv[4]) > 0 else None
kind = sys.argv[5] if len(sys.argv) > 5 else "uniform"
if kind not in ("uniform", "confusable"):
    sys.exit(f"inject_noise.py: KIND must be uniform or confusable; found {kind!r}")
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
confused = {}
if kind == "confusable":
    if len(sys.argv) <= 6:
        sys.exit("inject_noise.py: KIND confusable needs EVALUATION (a clean model's evaluator JSON)")
    ev = json.load(open(sys.argv[6]))
    names, conf = ev["labels"], ev["train"]["confusion"]
    for i, l in enumerate(names):
        others = [(c, -j) for j, c in enumerate(conf[i]) if j != i]
        c, j = max(others)
        # A class the clean model never confuses: its most-predicted neighbour is unknown, so a
        # fixed random other label stands in.
        confused[l] = names[-j] if c > 0 else random.Random(l).choice([x for x in names if x != l])
os.makedirs(out, exist_ok=True)
flipped = 0
with open(os.path.join(out, "train.jsonl"), "w") as f:
    for i, (t, l) in enumerate(train):
        given = l
        if rng.random() < noise:
            given = rng.choice([x for x in labels if x != l])
            if kind == "confusable":
                given = confused[l]
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
print(f"{flipped} of {len(train)} train labels flipped ({kind})", file=sys.stderr)
