# Mask R-CNN on balloon with the ResNet-18 of the 32-px Imagenette studies (timm resnet18, pretrained at 32 px) and
# MMDetection's FPN: the CPU-sized setting of issue 34's probes (reports/detection/balloon-r18-probes.md), one config
# for every backbone (the checkpoint given per run: --backbone PATH, or --backbone none for the random-init control).
# Run it at BALLOON_SCALE=384,256: the median balloon is then 48 px (train) / 39 px (val), near the object scale of a
# 32-px Imagenette image, which is what the backbone saw in pretraining.
# Stem and layer1 frozen, BatchNorm in eval mode (MMDetection's ResNet detection defaults, in the base).
# 128 sampled RoIs per image (Detectron2's balloon tutorial; the box and mask heads' CPU cost is per RoI); RPN anchors
# at scales 4 and 8 (16-32 px at stride 4) as 28% of the val balloons are under 16 px at this scale.
# FPN and heads 128 channels wide instead of 256, and 300 RPN proposals at test instead of 1000: 1.7 s per
# training iteration and 0.5 s per val image instead of 3.8 and 1.9 (1 thread, Xeon AVX-512), for every backbone alike.
# SGD lr 0.01 at batch 2 with gradients clipped (the heads start from random weights), lr steps at 2/3 and 11/12.
_base_ = ["./_base_/mask-rcnn_rbdc-resnet_fpn.py", "./_base_/balloon-instance.py"]

model = dict(
    backbone=dict(model_name="resnet18", init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/r18.pth}}")),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128, anchor_generator=dict(scales=[4, 8])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, num_classes=1),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(in_channels=128, conv_out_channels=128, num_classes=1),
    ),
    train_cfg=dict(rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(max_per_img=300)),
)

train_cfg = dict(max_epochs=24, val_interval=1)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type="MultiStepLR", begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.01), clip_grad=dict(max_norm=35, norm_type=2))
# a checkpoint every epoch (the latest kept) so that a run can stop and --resume at any epoch boundary
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1), logger=dict(interval=10))
