# COCO 2017 instances (MMDetection's pipeline at 1333x800) read from $COCO_ROOT (default data/coco), which must hold
# annotations/instances_{train,val}2017.json, train2017/ and val2017/. The launchers check it before building anything.
_base_ = ["mmdet::_base_/datasets/coco_instance.py"]

data_root = "{{$COCO_ROOT:data/coco}}/"
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "annotations/instances_val2017.json")
test_evaluator = val_evaluator
