# Mask R-CNN with a timm ResNet trunk (RBDCResNet) and MMDetection's FPN, 1x schedule (SGD lr 0.02 for batch 16).
# Same detection-specific behaviour as MMDetection's ResNet: stem and layer1 frozen, BatchNorm in eval mode.
_base_ = [
    "mmdet::_base_/models/mask-rcnn_r50_fpn.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["rbdc.detection"], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type="RBDCResNet",
        model_name="resnet50",
        out_indices=(1, 2, 3, 4),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
