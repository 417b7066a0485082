# Mask R-CNN, RBDC ResNet-50 backbone (2 x half-width ResNet-50s coupled: a standard ResNet-50), FPN, COCO 1x.
_base_ = ["./_base_/mask-rcnn_rbdc-resnet_fpn.py", "./_base_/coco-instance.py"]

model = dict(
    backbone=dict(model_name="resnet50", init_cfg=dict(checkpoint="{{$BACKBONE_CKPT:backbones/rbdc-r50.pth}}"))
)
