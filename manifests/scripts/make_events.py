"""Generates a small search log: (query, item, action, timestamp) events where users click and
order items relevant to their query and mostly skip the others; some returns and duplicates.
Usage: make_events.py OUT_FILE [SESSIONS]
"""
import random, sys

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rng = random.Random(23)
catalog = {"running shoes": ["trail runner", "road racer"], "winter hat": ["wool beanie", "fleece cap"],
           "phone case": ["silicone case", "leather wallet case"], "desk lamp": ["led desk lamp", "clamp lamp"]}
items = [i for v in catalog.values() for i in v]
with open(out, "w") as f:
    f.write("query,item,action,timestamp\n")
    for s in range(n):
        q = rng.choice(list(catalog))
        t = s * 1000
        for it in rng.sample(items, 3):
            relevant = it in catalog[q]
            f.write(f"{q},{it},impression,{t}\n")
            if rng.random() < 0.1:
                f.write(f"{q},{it},impression,{t}\n")  # a logged duplicate
            if rng.random() < (0.7 if relevant else 0.1):
                f.write(f"{q},{it},click,{t + rng.randint(1, 30)}\n")
                if rng.random() < (0.4 if relevant else 0.05):
                    f.write(f"{q},{it},order,{t + 100}\n")
                    if rng.random() < 0.1:
                        f.write(f"{q},{it},return,{t + 900}\n")
