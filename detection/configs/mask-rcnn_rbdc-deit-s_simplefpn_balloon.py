# Mask R-CNN, RBDC DeiT-S backbone, simple FPN, fine-tuned on balloon (1 class). 61 images at batch 2 are 31
# iterations per epoch; 24 epochs with the 1x recipe's warm-up and two lr steps.
_base_ = ["./_base_/mask-rcnn_rbdc-vit_simplefpn.py", "./_base_/balloon-instance.py"]

model = dict(
    backbone=dict(
        model_name="deit_small_patch16_224", init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/rbdc-deit-s.pth}}")
    ),
    neck=dict(in_channels=384),
    roi_head=dict(bbox_head=dict(num_classes=1), mask_head=dict(num_classes=1)),
)

train_cfg = dict(max_epochs=24, val_interval=6)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type="MultiStepLR", begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=6, max_keep_ckpts=1), logger=dict(interval=10))
