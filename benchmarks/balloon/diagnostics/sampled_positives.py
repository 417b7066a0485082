import sys, torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmdet.apis import init_detector
import rbdc.detection  # noqa: F401 (registers the RBDC backbones with mmdet)
from mmdet.utils import register_all_modules  # noqa: F401

wd = sys.argv[1]
cfg = Config.fromfile(f"{wd}/mask-rcnn_vit-nano_simplefpn_balloon.py")
cfg.model.backbone.init_cfg = None
ck = open(f"{wd}/last_checkpoint").read().strip().split("/")[-1]
model = init_detector(cfg, f"{wd}/{ck}", device="cpu")
model.train()
from mmdet.registry import DATASETS

ds = DATASETS.build(cfg.train_dataloader.dataset)
counts = {"rpn": [], "rcnn": []}
for name, head in (("rpn", model.rpn_head), ("rcnn", model.roi_head)):
    s = head.sampler if name == "rpn" else head.bbox_sampler
    orig = s.sample

    def wrap(*a, _o=orig, _n=name, **k):
        r = _o(*a, **k)
        counts[_n].append((len(r.pos_inds), len(r.neg_inds), int(r.pos_is_gt.sum()) if hasattr(r, "pos_is_gt") else -1))
        return r

    s.sample = wrap
torch.manual_seed(0)
for i in range(8):
    data = model.data_preprocessor(pseudo_collate([ds[i]]), True)
    with torch.no_grad():
        losses = model.loss(data["inputs"], data["data_samples"])
    ngt = len(data["data_samples"][0].gt_instances)
    print(
        i,
        "gt",
        ngt,
        "rpn pos/neg",
        counts["rpn"][-1][:2],
        "rcnn pos/neg/pos_is_gt",
        counts["rcnn"][-1],
        "loss_cls",
        round(float(losses["loss_cls"]), 3),
        "acc",
        round(float(losses["acc"]), 1),
    )
