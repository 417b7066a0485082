# Mask R-CNN with a timm ViT/DeiT trunk (RBDCViT) and ViTDet's simple feature pyramid (RBDCSimpleFPN), 1x schedule.
# The leaf configs set model_name, the neck's in_channels and the checkpoint; a dataset base is inherited beside this.
# Optimiser: AdamW lr 1e-4, wd 0.05, no decay on position embedding / tokens / norms: MMDetection's 1x recipe for
# transformer backbones (configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py), used for RBDC and controls alike.
_base_ = [
    "mmdet::_base_/models/mask-rcnn_r50_fpn.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
# allow_failed_imports=False: a wrong module path stops here instead of a later "not in the registry" KeyError.
custom_imports = dict(imports=["rbdc.detection"], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type="RBDCViT",
        model_name="deit_small_patch16_224",
        out_indices=(-1,),  # ViTDet: the pyramid is built from the last block alone
        drop_path_rate=0.1,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(
        _delete_=True,
        type="RBDCSimpleFPN",
        in_channels=384,
        out_channels=256,
        in_stride=16,
        strides=(4, 8, 16, 32),
        num_outs=5,
    ),
)

param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            "pos_embed": dict(decay_mult=0.0),
            "cls_token": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    ),
)
