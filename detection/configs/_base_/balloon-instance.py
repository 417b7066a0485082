# Balloon (Matterport, one class, 61 train / 13 val images) in COCO format, read from $BALLOON_ROOT: the launchers
# set it to an extraction of $RBDC_DATA/balloon_dataset.zip in the cache folder when unset. $BALLOON_SCALE (default
# 1333,800, MMDetection's) sets the resize scale: e.g. BALLOON_SCALE=640,384 for CPU runs.
_base_ = ["mmdet::_base_/datasets/coco_instance.py"]

data_root = "{{$BALLOON_ROOT:data/balloon}}/"
img_scale = {{"$BALLOON_SCALE:1333,800"}}
metainfo = dict(classes=("balloon",), palette=[(220, 20, 60)])

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="Resize", scale=img_scale, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=img_scale, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file="train.json",
        data_prefix=dict(img="train/"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file="val.json",
        data_prefix=dict(img="val/"),
        pipeline=test_pipeline,
    )
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "val.json", metric=["bbox", "segm"])
test_evaluator = val_evaluator
