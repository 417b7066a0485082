# The balloon ViT-nano config with large-scale-jitter training crops (the ViTDet/LSJ pipeline of MMDetection's
# `mask-rcnn_r50_fpn_simplecopypaste-*` configs, at the balloon scale): each training image is resized by a random
# factor in [0.5, 2] of BALLOON_SCALE, then cropped to BALLOON_SCALE. At 320x192 balloons are small (median 30 px on
# val, 40% under 16 px); zooming in by up to 2x gives the RPN and RoI heads larger, better-matched positives, and
# each epoch shows different crops of the 61 images. Validation is unchanged.
_base_ = "./mask-rcnn_vit-nano_simplefpn_balloon.py"

img_scale = {{"$BALLOON_SCALE:1333,800"}}
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomResize", scale=img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    # crop_size is (width, height), as the scale is
    dict(type="RandomCrop", crop_type="absolute", crop_size=img_scale, recompute_bbox=True, allow_negative_crop=True),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
