import json, numpy as np

root = "/root/.cache/rbdc/data/balloon_dataset/balloon/"
for split in ("train", "val"):
    ann = json.load(open(root + f"{split}.json"))
    ims = {i["id"]: i for i in ann["images"]}
    s = []
    for a in ann["annotations"]:
        im = ims[a["image_id"]]
        f = min(320 / max(im["width"], im["height"]), 192 / min(im["width"], im["height"]))
        s.append(np.sqrt(a["bbox"][2] * a["bbox"][3]) * f)
    s = np.array(s)
    print(
        split,
        len(s),
        "sqrt-area px at 320x192: pct 10/25/50/75/90",
        np.round(np.percentile(s, [10, 25, 50, 75, 90]), 1),
        "<16:",
        (s < 16).mean().round(2),
        "<23 (IoU<.5 w/ 32 anchor):",
        (s < 22.6).mean().round(2),
    )
