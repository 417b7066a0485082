import json, numpy as np, torch
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from mmdet.structures.bbox import bbox_overlaps

torch.set_num_threads(1)
root = "/root/.cache/rbdc/data/balloon_dataset/balloon/"
ann = json.load(open(root + "train.json"))
ims = {i["id"]: i for i in ann["images"]}
for sc in ([8], [4], [2], [2, 4], [2, 3, 4]):
    gen = AnchorGenerator(strides=[4, 8, 16, 32, 64], ratios=[0.5, 1.0, 2.0], scales=sc)
    n5, n7, best = [], [], []
    for iid, im in ims.items():
        f = min(320 / max(im["width"], im["height"]), 192 / min(im["width"], im["height"]))
        H, W = int(im["height"] * f + 0.5), int(im["width"] * f + 0.5)
        anchors = torch.cat(gen.grid_priors([(-(-H // s), -(-W // s)) for s in (4, 8, 16, 32, 64)], device="cpu"))
        g = (
            torch.tensor(
                [
                    [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                    for a in ann["annotations"]
                    if a["image_id"] == iid
                ]
            )
            * f
        )
        o = bbox_overlaps(g, anchors)
        n5 += (o >= 0.5).sum(1).tolist()
        n7 += (o >= 0.7).sum(1).tolist()
        best += o.max(1).values.tolist()
    print(
        f"scales {sc}: anchors per GT with IoU>=0.7 mean {np.mean(n7):.1f} (GT with none {np.mean(np.array(n7) == 0):.2f}); >=0.5 mean {np.mean(n5):.1f} (none {np.mean(np.array(n5) == 0):.2f})"
    )
