import sys, json, torch, numpy as np
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmdet.apis import init_detector
from mmdet.structures.bbox import bbox_overlaps
import rbdc.detection  # noqa: F401 (registers the RBDC backbones with mmdet)

wd, split, mode = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = Config.fromfile(f"{wd}/mask-rcnn_vit-nano_simplefpn_balloon.py")
cfg.model.backbone.init_cfg = None
ck = open(f"{wd}/last_checkpoint").read().strip().split("/")[-1]
model = init_detector(cfg, f"{wd}/{ck}", device="cpu")
if mode == "train":
    model.train()
pipe = Compose(cfg.test_dataloader.dataset.pipeline)
root = "/root/.cache/rbdc/data/balloon_dataset/balloon/"
ann = json.load(open(root + f"{split}.json"))
rec5, recg = [], []
for im in ann["images"][:12]:
    gts = torch.tensor(
        [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in ann["annotations"]
            if a["image_id"] == im["id"]
        ],
        dtype=torch.float,
    )
    d = pipe(dict(img_path=root + f"{split}/" + im["file_name"], img_id=im["id"]))
    data = model.data_preprocessor(pseudo_collate([d]), False)
    sf = torch.tensor(data["data_samples"][0].metainfo["scale_factor"] * 2)
    g = gts * sf
    with torch.no_grad():
        x = model.extract_feat(data["inputs"])
        props = model.rpn_head.predict(x, data["data_samples"], rescale=False)[0]
        top = props.bboxes[:100]
        iou = bbox_overlaps(g, top)
        rec5 += (iou.max(1).values >= 0.5).tolist()
        # RoI head scores on the GT boxes themselves
        from mmdet.structures.bbox import bbox2roi

        rois = bbox2roi([g])
        res = model.roi_head._bbox_forward(x, rois)
        gsc = res["cls_score"].softmax(-1)[:, 0]
        # and on the top-100 proposals
        psc = model.roi_head._bbox_forward(x, bbox2roi([top]))["cls_score"].softmax(-1)[:, 0]
    recg += gsc.tolist()
    print(
        im["file_name"][:12],
        "img",
        tuple(data["inputs"].shape[-2:]),
        "gt",
        len(g),
        "RPN top100 recall@.5",
        f"{(iou.max(1).values >= 0.5).float().mean():.2f}",
        "top1 prop IoU",
        f"{iou[:, 0].max():.2f}",
        "rpn score top5",
        np.round(props.scores[:5].numpy(), 2),
        "cls score on GT",
        np.round(gsc.numpy()[:4], 2),
        "max on props",
        f"{psc.max():.2f}",
    )
print(mode, split, "recall", np.mean(rec5), "mean GT score", np.mean(recg))
