# Mask R-CNN, RBDC ResNet-50 backbone, FPN, fine-tuned on balloon (1 class), 24 epochs at batch 2.
# lr 0.0025 = the 1x recipe's 0.02 at batch 16, scaled linearly to batch 2; gradients clipped as the heads start
# from scratch.
_base_ = ["./_base_/mask-rcnn_rbdc-resnet_fpn.py", "./_base_/balloon-instance.py"]

model = dict(
    backbone=dict(model_name="resnet50", init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/rbdc-r50.pth}}")),
    roi_head=dict(bbox_head=dict(num_classes=1), mask_head=dict(num_classes=1)),
)

train_cfg = dict(max_epochs=24, val_interval=6)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type="MultiStepLR", begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.0025), clip_grad=dict(max_norm=35, norm_type=2))
default_hooks = dict(checkpoint=dict(interval=6, max_keep_ckpts=1), logger=dict(interval=10))
