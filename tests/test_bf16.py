"""rbdc.training.bf16: CPU bf16 autocast emulated in fp32 gives what torch's bf16 kernels give, up to summation
order."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from rbdc.training import bf16, engine
from rbdc.cost import perf
from rbdc.recipe import DEFAULTS, Recipe

GEMMS = {"mm", "addmm", "bmm", "baddbmm", "convolution"}  # the aten kernels the emulated ops end in


@pytest.fixture(autouse=True)
def emulation():
    """Each test starts and ends on torch's kernels (a bf16 run earlier in the process, on a CPU without bf16
    kernels, leaves the emulation installed, as the engine does)."""
    bf16.uninstall()
    yield bf16.install
    bf16.uninstall()


class GemmDtypes(TorchDispatchMode):
    """The operand dtypes every GEMM-type kernel below autocast receives."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in GEMMS:
            self.seen |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
        return func(*args, **(kwargs or {}))


def _ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 48, generator=g, requires_grad=True)
    w = torch.randn(96, 48, generator=g, requires_grad=True)
    b = torch.randn(96, generator=g, requires_grad=True)
    q = torch.randn(2, 4, 33, 16, generator=g)
    img = torch.randn(4, 3, 16, 16, generator=g)
    cw, cw3 = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 3, 3, generator=g)
    ops = {
        "linear": lambda: F.linear(x, w, b),
        "matmul": lambda: q @ q.transpose(-1, -2),
        "mm": lambda: torch.mm(x, w.t()),
        "bmm": lambda: torch.bmm(q[0], q[0].transpose(1, 2)),
        "addmm": lambda: torch.addmm(b, x, w.t()),
        "baddbmm": lambda: torch.baddbmm(q[0, :, :, :1], q[0], q[0].transpose(1, 2)),
        "conv2d": lambda: F.conv2d(img, cw, stride=4),
        "conv2d.padding": lambda: F.conv2d(img, cw3, padding="same"),
    }
    outs, dtypes = {}, {}
    for name, fn in ops.items():
        with GemmDtypes() as seen, torch.autocast("cpu", dtype=torch.bfloat16):
            outs[name] = fn()
        dtypes[name] = seen.seen
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.linear(x, w, b).float().square().sum()
    grads = dict(zip(["grad x", "grad w", "grad b"], torch.autograd.grad(loss, [x, w, b])))
    return outs, grads, dtypes


def test_emulated_ops_run_fp32_gemms_and_match_the_bf16_kernels_to_one_rounding(emulation):
    native, native_grads, native_gemms = _ops()
    assert emulation() and not bf16.install()  # installs once per process
    got, got_grads, got_gemms = _ops()
    assert set(got) == set(bf16.OPS)
    for name, ref in native.items():
        assert native_gemms[name] == {torch.bfloat16} and got_gemms[name] == {torch.float32}, name
        out = got[name]
        assert out.dtype == ref.dtype == torch.bfloat16, name
        # one bf16 rounding apart at most (2^-8 relative, plus the operands' scale for sums near zero)
        assert ((out.float() - ref.float()).abs() <= 2**-7 * ref.float().abs() + 1e-2).all(), name
        assert (out != ref).float().mean() < 0.01, name  # mostly bit-equal: only the fp32 summation order differs
    for name, ref in native_grads.items():
        g = got_grads[name]
        assert torch.equal(g, g.bfloat16().float()), name  # rounded to bf16, as autocast's gradients are
        assert torch.linalg.norm(g - ref) <= 1e-2 * torch.linalg.norm(ref), name


def test_uninstall_restores_torchs_kernels(emulation):
    emulation()
    bf16.uninstall()
    assert not bf16.installed()
    _, _, gemms = _ops()
    assert all(d == {torch.bfloat16} for d in gemms.values())


def test_the_result_is_the_fp32_op_of_rounded_operands_rounded(emulation):
    """What makes it bf16: operands and result rounded, so it is not the fp32 op (guards against a no-op)."""
    x, w = torch.randn(64, 32), torch.randn(16, 32)
    emulation()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.linear(x, w)
    assert out.dtype == torch.bfloat16 and not torch.equal(out.float(), F.linear(x, w))
    assert torch.equal(out, F.linear(x.bfloat16().float(), w.bfloat16().float()).bfloat16())


def test_what_autocast_leaves_alone_stays_alone(emulation):
    """float64 and integer operands are not cast by autocast, so not rounded; fp16 autocast rounds to fp16."""
    emulation()
    a64, i = torch.randn(8, 8, dtype=torch.float64), torch.arange(16).reshape(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out64, out_int = torch.mm(a64, a64), torch.mm(i, i)
    assert out64.dtype == torch.float64 and torch.equal(out64, a64 @ a64)
    assert out_int.dtype == torch.int64 and torch.equal(out_int, i @ i)
    x = torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.float16):
        out16 = torch.mm(x, x)
    assert out16.dtype == torch.float16 and torch.equal(out16, (x.half().float() @ x.half().float()).half())


def test_bf16_autocast_installs_the_emulation_only_where_the_cpu_lacks_bf16_kernels(monkeypatch):
    monkeypatch.setattr(perf, "cpu_bf16_fast", lambda: True)
    with engine.autocast_for(Recipe.from_dict({**DEFAULTS, "amp": "bf16"}), torch.device("cpu")):
        pass
    assert not bf16.installed() and bf16.matmul_path() == "onednn"
    monkeypatch.setattr(perf, "cpu_bf16_fast", lambda: False)
    with engine.autocast_for(Recipe.from_dict({**DEFAULTS, "amp": "fp32"}), torch.device("cpu")):
        pass
    assert not bf16.installed()
    with engine.autocast_for(Recipe.from_dict({**DEFAULTS, "amp": "bf16"}), torch.device("cpu")):
        pass
    assert bf16.installed() and bf16.matmul_path() == "fp32-rounded"
