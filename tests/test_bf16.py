"""rbdc.bf16: CPU bf16 autocast emulated in fp32 must give what torch's bf16 kernels give, up to summation order."""
import pytest
import torch
import torch.nn.functional as F

from rbdc import bf16, engine, perf


@pytest.fixture(autouse=True)
def emulation():
    """Each test starts and ends on torch's kernels (a bf16 run earlier in the process, on a CPU without bf16
    kernels, leaves the emulation installed, as the engine does)."""
    bf16.uninstall()
    yield bf16.install
    bf16.uninstall()


def _ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 48, generator=g, requires_grad=True)
    w = torch.randn(96, 48, generator=g, requires_grad=True)
    b = torch.randn(96, generator=g, requires_grad=True)
    q = torch.randn(2, 4, 33, 16, generator=g)
    img = torch.randn(4, 3, 16, 16, generator=g)
    cw = torch.randn(8, 3, 4, 4, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = {"linear": F.linear(x, w, b), "matmul": q @ q.transpose(-1, -2), "mm": torch.mm(x, w.t()),
                "bmm": torch.bmm(q[0], q[0].transpose(1, 2)), "addmm": torch.addmm(b, x, w.t()),
                "baddbmm": torch.baddbmm(q[0, :, :, :1], q[0], q[0].transpose(1, 2)),
                "conv2d": F.conv2d(img, cw, stride=4)}
    grads = torch.autograd.grad(outs["linear"].float().square().sum(), [x, w, b])
    return outs, dict(zip(["grad x", "grad w", "grad b"], grads))


def test_emulated_ops_match_the_bf16_kernels_to_one_rounding_and_gradients_follow(emulation):
    native, native_grads = _ops()
    assert emulation() and not bf16.install()  # installs once per process
    got, got_grads = _ops()
    assert set(got) == set(bf16.OPS)
    for name, ref in native.items():
        out = got[name]
        assert out.dtype == ref.dtype == torch.bfloat16, name
        # one bf16 rounding apart at most (2^-8 relative, plus the operands' scale for sums near zero)
        assert ((out.float() - ref.float()).abs() <= 2 ** -7 * ref.float().abs() + 1e-2).all(), name
        assert (out != ref).float().mean() < 0.01, name  # mostly bit-equal: only the fp32 summation order differs
    for name, ref in native_grads.items():
        assert torch.linalg.norm(got_grads[name] - ref) <= 1e-2 * torch.linalg.norm(ref), name


def test_uninstall_restores_torchs_kernels(emulation):
    native, _ = _ops()
    emulation()
    bf16.uninstall()
    assert not bf16.installed()
    again, _ = _ops()
    assert all(torch.equal(again[k], native[k]) for k in native)


def test_emulation_differs_from_plain_fp32(emulation):
    """What makes it bf16: the result is rounded, so it is not the fp32 op (guards against a no-op emulation)."""
    x, w = torch.randn(64, 32), torch.randn(16, 32)
    emulation()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.linear(x, w)
    assert out.dtype == torch.bfloat16 and not torch.equal(out.float(), F.linear(x, w))
    assert torch.equal(out, F.linear(x.bfloat16().float(), w.bfloat16().float()).bfloat16())


def test_bf16_autocast_installs_the_emulation_only_where_the_cpu_lacks_bf16_kernels(monkeypatch):
    monkeypatch.setattr(perf, "cpu_bf16_fast", lambda: True)
    with engine.autocast_for({"amp": "bf16"}, torch.device("cpu")):
        pass
    assert not bf16.installed()
    assert perf.cpu_info()["bf16_matmul"] == "onednn"
    monkeypatch.setattr(perf, "cpu_bf16_fast", lambda: False)
    with engine.autocast_for({"amp": "fp32"}, torch.device("cpu")):
        pass
    assert not bf16.installed()
    with engine.autocast_for({"amp": "bf16"}, torch.device("cpu")):
        pass
    assert bf16.installed()
    assert perf.cpu_info()["bf16_matmul"] == "fp32-rounded"
