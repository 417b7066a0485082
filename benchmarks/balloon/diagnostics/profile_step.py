"""Profile balloon Mask R-CNN train steps: forward time of the backbone, neck and RPN head, and the top ops.

Takes det-train's arguments. The RoI head is not timed: MMDetection's loss path calls ``roi_head.loss``, not its
forward, so a forward hook never fires there (its cost shows in the op table).
"""

import argparse
import sys
import time

import torch

from rbdc.detection.launch import _build_runner, add_train_arguments, load_config

args = add_train_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:])
runner = _build_runner(load_config(args))
optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
model = runner.model
model.init_weights()
model.train()
batches = iter(runner.train_loop.dataloader)
started, forward_s = {}, {}


def timed(name: str, module: torch.nn.Module) -> None:
    def start(m, a):
        started[name] = time.perf_counter()

    def stop(m, a, o):
        forward_s.setdefault(name, []).append(time.perf_counter() - started[name])

    module.register_forward_pre_hook(start)
    module.register_forward_hook(stop)


for name in ("backbone", "neck", "rpn_head"):
    timed(name, getattr(model, name))
steps = []
for i in range(6):
    data = next(batches)
    start = time.perf_counter()
    if i == 5:
        with torch.profiler.profile() as prof:
            model.train_step(data, optim_wrapper)
    else:
        model.train_step(data, optim_wrapper)
    steps.append(time.perf_counter() - start)
print("step s:", [round(s, 2) for s in steps])
print({k: [round(x, 3) for x in v[1:]] for k, v in forward_s.items()}, "(forward s, first step left out)")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
