"""Scores labels against the planted truth; writes metrics and a short text summary."""
import json, sys

src, out, metrics = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(src)]
acc = sum(r["label"] == r["true"] for r in rows) / len(rows)
open(out, "w").write(f"rows={len(rows)} label_accuracy={acc:.4f}\n")
json.dump({"rows": len(rows), "label_accuracy": acc}, open(metrics, "w"))
