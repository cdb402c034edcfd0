"""Scores a relabelling against the planted truth: reads the noisy train.jsonl (with true_label),
the flags and the apply_labels audit; writes metrics (flagged, flag precision, changed, correct
changes, train-label accuracy before/after).
Usage: score_relabel.py DATA_DIR FLAGS AUDIT METRICS_OUT
"""
import json, sys

data, flags, audit, out = sys.argv[1:5]
train = {r["id"]: r for r in map(json.loads, open(data + "/train.jsonl"))}
flagged = [json.loads(l) for l in open(flags) if l.strip()]
changes = [json.loads(l) for l in open(audit) if l.strip()]
labels = {i: r["label"] for i, r in train.items()}
before = sum(labels[i] == r["true_label"] for i, r in train.items()) / len(train)
correct = 0
for c in changes:
    if c["split"] == "train":
        labels[c["id"]] = c["new_label"]
        correct += c["new_label"] == train[c["id"]]["true_label"]
after = sum(labels[i] == r["true_label"] for i, r in train.items()) / len(train)
noisy_flagged = sum(1 for f in flagged if f["split"] == "train" and train[f["id"]]["label"] != train[f["id"]]["true_label"])
json.dump({
    "flagged": len(flagged),
    "flag_precision": noisy_flagged / max(1, sum(1 for f in flagged if f["split"] == "train")),
    "changed": len(changes),
    "correct_changes": correct,
    "label_accuracy_before": before,
    "label_accuracy_after": after,
}, open(out, "w"))
