"""One cleaning round: fixes up to BUDGET rows whose label disagrees with a keyword vote; writes metrics."""
import json, sys

src, dst, metrics, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
vote = {"invoice": "billing", "charge": "billing", "refund": "billing", "payment": "billing",
        "parcel": "shipping", "courier": "shipping", "delivery": "shipping", "tracking": "shipping"}
rows = [json.loads(l) for l in open(src)]
changed = 0
for r in rows:
    votes = [vote[w] for w in r["text"].split()]
    pred = max(set(votes), key=votes.count)
    if pred != r["label"] and changed < budget:
        r["label"] = pred
        changed += 1
with open(dst, "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
flagged = sum(1 for r in rows if max(set(v := [vote[w] for w in r["text"].split()]), key=v.count) != r["label"])
json.dump({"changed": changed, "still_flagged": flagged, "flag_rate": flagged / len(rows)}, open(metrics, "w"))
