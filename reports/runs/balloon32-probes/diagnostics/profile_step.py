"""Profile balloon Mask R-CNN train steps: time per top-level module and the top ops."""
import sys, time, torch
from rbdc.detection.launch import add_train_arguments, load_config, _build_runner
import argparse
p = add_train_arguments(argparse.ArgumentParser())
args = p.parse_args(sys.argv[1:])
cfg = load_config(args)
runner = _build_runner(cfg)
runner._train_loop = runner.build_train_loop(runner._train_loop) if isinstance(runner._train_loop, dict) else runner._train_loop
runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
runner.model.init_weights()
model = runner.model
model.train()
loader = runner.train_dataloader if not isinstance(runner.train_dataloader, dict) else runner.build_dataloader(runner._train_dataloader)
it = iter(loader)
times = {}
def pre(name):
    def f(m, a): times.setdefault(name, []).append(-time.perf_counter())
    return f
def post(name):
    def f(m, a, o): times[name][-1] += time.perf_counter()
    return f
for name in ('backbone', 'neck', 'rpn_head', 'roi_head'):
    mod = getattr(model, name); mod.register_forward_pre_hook(pre(name)); mod.register_forward_hook(post(name))
steps = []
for i in range(6):
    data = next(it)
    t = time.perf_counter()
    if i == 5:
        with torch.profiler.profile() as prof:
            model.train_step(data, runner.optim_wrapper)
    else:
        model.train_step(data, runner.optim_wrapper)
    steps.append(time.perf_counter() - t)
print('step s:', [round(s, 2) for s in steps])
print({k: [round(x, 3) for x in v[1:]] for k, v in times.items()}, '(forward only)')
print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=25))
