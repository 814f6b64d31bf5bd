#!/usr/bin/env python3
"""Writes the pgn_unet_* fixtures: the PGN UNet of method.md section 3.2 (state-dict keys:
pgn-checkpoint-keys.md section 2.2).

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_pgn_unet.py [outdir=tests/fixtures]

write_all(outdir) writes (documented in tests/fixtures/README.md, section "pgn_unet_*"):

  pgn_unet_legacy.pth        the replica's state dict, torch legacy layout (the 115 keys of 2.2 in
                             that order; big conv weights are strided views of small storages)
  pgn_unet.safetensors       input, eval- and train-mode outputs, upstream gradient, parameter
                             gradients (sampled, I16 + scale, with each full tensor's L2 norm), BN
                             running statistics after the train forward, ReLU mask pins

The replica is built from the spec (module names and registration order as archs/unet_custom.py's
UNetCustom with its defaults: DoubleBlaze blocks, separable convs, BN). Its state_dict keys and
shapes are asserted equal to the table copied below, and its parameter count to 1,765,891.

Why 2x6x64x64: H and W must be multiples of 32; at 64 the deepest level is 2x2, and with a batch
of 2 its train-mode BNs see 8 values per channel (at 32, batch 2, they would see 2). Batch 2 also
tests that BN statistics span the batch.

Weights. The net has 1,765,891 parameters (7 MB as float32), so every conv weight with more than
2048 elements is a view base.as_strided(size, stride, offset) of a small random storage (as the
teacher_* fixtures do): torch.save keeps the view (storage + size + stride + offset), the reader
must materialise it. base = u - mean(u), u ~ U(-B, B), B = sqrt(6 / fan_in) (He-uniform; the mean
is removed because neighbouring filters overlap on most of the storage). Other conv weights:
contiguous U(-B, B); conv biases U(-0.1, 0.1); BN weight U[0.5, 1.5), bias U[-0.2, 0.2),
running_mean U[-0.1, 0.1), running_var U[0.5, 1.5), num_batches_tracked 3 + crc32(name) % 5. Every
float rounded to F16 precision (so any F16 copy holds them exactly). All stored as float32.

Gradients: storing all 1.77 M as I16 would take 3.5 MB. For each of the 88 parameter tensors the
file holds the gradient at up to SAMPLE element indices (all of them for small tensors; else a
seeded random sample that always includes the arg-max of |g|), as I16 codes with a per-tensor scale
s = max|g| / 32767 over the FULL tensor (quantisation error <= 1.6e-5 of max|g|), plus the full
tensor's L2 norm (F64 rounded to F32). A wiring error anywhere in a tensor shows in its L2 norm.

Mask pins: as in tools/fixtures_dip.py. The ReLU inputs within PIN of zero (21 ReLUs) get their
float64 sign stored, so the test can pin its ReLU masks there before the backward: a float32
forward lands on the other side of zero for a few of them, and each such flip moves gradients.

Everything is computed in float64 from the stored values and rounded to float32 when stored.
Deterministic: every random tensor comes from a generator seeded by the CRC-32 of its name.
"""

import math
import os
import sys
import zlib
from collections import OrderedDict

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_py  # noqa: E402
from fixtures_weights import canonical_legacy  # noqa: E402

GENERATOR = "tools/fixtures_pgn_unet.py"
N, H, W = 2, 64, 64
PARAM_COUNT = 1765891
PIN = 2e-3        # ReLU inputs with |x| < PIN get their float64 sign stored
SAMPLE = 1024     # gradient elements stored per parameter tensor (all when it has fewer)
VIEW_MIN = 2048   # conv weights with more elements are strided views of a small storage

DOWN = (64, 64, 128, 256, 512)

# pgn-checkpoint-keys.md section 2.2: (prefix, kind, spec)
# conv: (cin, cout, k, stride, groups, bias); bn: c
TABLE = [
    ("layer0.0", "conv", (6, 64, 7, 2, 1, False)), ("layer0.1", "bn", 64),
    ("layer1.1.cdw1", "conv", (64, 64, 5, 1, 64, False)), ("layer1.1.cpw1", "conv", (64, 64, 1, 1, 1, False)),
    ("layer1.1.cdw2", "conv", (64, 64, 5, 1, 64, False)), ("layer1.1.cpw2", "conv", (64, 64, 1, 1, 1, False)),
    ("layer1.1.bn1", "bn", 64), ("layer1.1.bn2", "bn", 64),
]
for _i, (_ci, _co) in enumerate(((64, 128), (128, 256), (256, 512)), start=2):
    _p = "layer%d." % _i
    TABLE += [
        (_p + "cdw1", "conv", (_ci, _co, 5, 2, _ci, False)), (_p + "cpw1", "conv", (_co, _co, 1, 1, 1, False)),
        (_p + "cdw2", "conv", (_co, _co, 5, 1, _co, False)), (_p + "cpw2", "conv", (_co, _co, 1, 1, 1, False)),
        (_p + "bn1", "bn", _co), (_p + "bn2", "bn", _co), (_p + "c1", "conv", (_ci, _co, 1, 2, 1, False)),
    ]


def _sep_rows(prefix, cin, cout, k):
    return [(prefix + ".0", "conv", (cin, cout, k, 1, math.gcd(cin, cout), True)),
            (prefix + ".1", "conv", (cout, cout, 1, 1, 1, True))]


TABLE += _sep_rows("conv_original_size0", 6, 64, 3) + _sep_rows("conv_original_size1", 64, 64, 3)
for _i, _c in enumerate(DOWN):
    TABLE += _sep_rows("layer%d_1x1" % _i, _c, _c, 1)
TABLE += _sep_rows("conv_original_size2", 192, 64, 3)
TABLE += _sep_rows("conv_up0", 320, 128, 3) + _sep_rows("conv_up1", 320, 256, 3)
TABLE += _sep_rows("conv_up2", 640, 256, 3) + _sep_rows("conv_up3", 768, 512, 3)
TABLE += [("conv_last", "conv", (64, 3, 1, 1, 1, True))]


def table_keys():
    """The 115 (key, shape) pairs of the table, in state_dict order."""
    out = []
    for prefix, kind, spec in TABLE:
        if kind == "conv":
            cin, cout, k, _, groups, bias = spec
            out.append((prefix + ".weight", [cout, cin // groups, k, k]))
            if bias:
                out.append((prefix + ".bias", [cout]))
        else:
            out += [(prefix + "." + s, [spec]) for s in ("weight", "bias", "running_mean", "running_var")]
            out.append((prefix + ".num_batches_tracked", []))
    return out


# ---------------------------------------------------------------------------- the replica


def sep(cin, cout, k, pad):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, groups=math.gcd(cin, cout), bias=True),
                         nn.Conv2d(cout, cout, 1, bias=True), nn.ReLU())


class DoubleBlazeBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.stride = stride
        self.cdw1 = nn.Conv2d(cin, cout, 5, stride=stride, padding=2, groups=cin, bias=False)
        self.cpw1 = nn.Conv2d(cout, cout, 1, bias=False)
        self.cdw2 = nn.Conv2d(cout, cout, 5, stride=1, padding=2, groups=cout, bias=False)
        self.cpw2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.r1 = nn.ReLU()
        self.r2 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride == 2:
            self.c1 = nn.Conv2d(cin, cout, 1, stride=2, bias=False)

    def forward(self, x):
        h = self.r1(self.bn1(self.cpw1(self.cdw1(x))))
        h = self.bn2(self.cpw2(self.cdw2(h)))
        return self.r2(h + (self.c1(x) if self.stride == 2 else x))


class UNetCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer0 = nn.Sequential(nn.Conv2d(6, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                    nn.ReLU())
        self.layer1 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), DoubleBlazeBlock(64, 64, 1))
        self.layer2 = DoubleBlazeBlock(64, 128, 2)
        self.layer3 = DoubleBlazeBlock(128, 256, 2)
        self.layer4 = DoubleBlazeBlock(256, 512, 2)
        self.conv_original_size0 = sep(6, 64, 3, 1)
        self.conv_original_size1 = sep(64, 64, 3, 1)
        for i, c in enumerate(DOWN):
            self.add_module("layer%d_1x1" % i, sep(c, c, 1, 0))
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv_original_size2 = sep(192, 64, 3, 1)
        self.conv_up0 = sep(320, 128, 3, 1)
        self.conv_up1 = sep(320, 256, 3, 1)
        self.conv_up2 = sep(640, 256, 3, 1)
        self.conv_up3 = sep(768, 512, 3, 1)
        self.conv_last = nn.Conv2d(64, 3, 1)

    def forward(self, inp, target):
        x = torch.cat([inp, target], dim=1)
        x_original = self.conv_original_size1(self.conv_original_size0(x))
        skips = []
        for i in range(5):
            x = getattr(self, "layer%d" % i)(x)
            skips.append(getattr(self, "layer%d_1x1" % i)(x))
        x = skips[4]
        for conv, s in ((self.conv_up3, skips[3]), (self.conv_up2, skips[2]), (self.conv_up1, skips[1]),
                        (self.conv_up0, skips[0]), (self.conv_original_size2, x_original)):
            x = conv(torch.cat([self.upsample(x), s], dim=1))
        return self.conv_last(x)


def gen_for(name):
    g = torch.Generator()
    g.manual_seed(zlib.crc32(("pgn_unet/" + name).encode()))
    return g


def uniform(name, shape, lo, hi):
    return torch.rand(*shape, generator=gen_for(name), dtype=torch.float32) * (hi - lo) + lo


def f16(t):
    return t.half().float()


# Strides of the viewed weights: (s0, s1) coprime, s0 != s1, taps c * s2 + d distinct (s2 = k + 1).
S01 = [(3, 2), (5, 3), (2, 5), (7, 3), (4, 3), (5, 2), (3, 4), (2, 3), (5, 4), (3, 5), (7, 2), (4, 5)]


def weight_view(index, name, shape, fan_in):
    cout, cin_g, k, _ = shape
    bound = math.sqrt(6.0 / fan_in)
    s0, s1 = S01[index % len(S01)]
    s2 = k + 1 if k > 1 else 1
    s3 = 1
    assert math.gcd(s0, s1) == 1 and s0 != s1
    assert len({c * s2 + d * s3 for c in range(k) for d in range(k)}) == k * k
    off = index % 7
    tail = 3 + off % 5
    size, stride = (cout, cin_g, k, k), (s0, s1, s2, s3)
    need = off + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    base = uniform(name, (need + tail,), -bound, bound)
    base = f16(base - base.double().mean().float())
    return base.as_strided(size, stride, off)


def build():
    """The replica (float32, train mode) and the state dict to save (views where they apply)."""
    net = UNetCustom()
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert got == table_keys(), "state_dict differs from pgn-checkpoint-keys.md 2.2"
    nparams = sum(p.numel() for p in net.parameters())
    assert nparams == PARAM_COUNT, nparams
    save = OrderedDict()
    nview = 0
    with torch.no_grad():
        modules = dict(net.named_modules())
        for prefix, kind, spec in TABLE:
            m = modules[prefix]
            if kind == "conv":
                shape = tuple(m.weight.shape)
                fan_in = shape[1] * shape[2] * shape[3]
                if m.weight.numel() > VIEW_MIN:
                    w = weight_view(nview, prefix + ".weight", shape, fan_in)
                    nview += 1
                else:
                    b = math.sqrt(6.0 / fan_in)
                    w = f16(uniform(prefix + ".weight", shape, -b, b))
                m.weight.copy_(w)
                save[prefix + ".weight"] = w
                if m.bias is not None:
                    m.bias.copy_(f16(uniform(prefix + ".bias", (shape[0],), -0.1, 0.1)))
                    save[prefix + ".bias"] = m.bias.detach().clone()
            else:
                c = spec
                m.weight.copy_(f16(uniform(prefix + ".weight", (c,), 0.5, 1.5)))
                m.bias.copy_(f16(uniform(prefix + ".bias", (c,), -0.2, 0.2)))
                m.running_mean.copy_(f16(uniform(prefix + ".running_mean", (c,), -0.1, 0.1)))
                m.running_var.copy_(f16(uniform(prefix + ".running_var", (c,), 0.5, 1.5)))
                m.num_batches_tracked.fill_(3 + zlib.crc32(prefix.encode()) % 5)
                for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    save[prefix + "." + s] = getattr(m, s).detach().clone()
    assert list(save) == [k for k, _ in table_keys()]
    return net, save, nview


def same_view(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset() and a.storage().size() == b.storage().size()
            and torch.equal(torch.tensor(a.storage().tolist()), torch.tensor(b.storage().tolist()))
            and torch.equal(a, b))


# ---------------------------------------------------------------------------- writing


def quantise(g, scale_of):
    m = scale_of.abs().max().item()
    scale = m / 32767.0 if m > 0 else 1.0
    scale = float(torch.tensor(scale, dtype=torch.float32))
    codes = torch.round(g / scale).clamp(-32767, 32767).to(torch.int16)
    return codes, torch.tensor([scale], dtype=torch.float32)


def compute(net, x, dy):
    """float64 eval output (state-dict running stats), then train output, ReLU inputs, gradients,
    running stats after the train forward."""
    net64 = net.double()
    a, b = x[:, :3].double(), x[:, 3:].double()
    net64.eval()
    with torch.no_grad():
        o_eval = net64(a, b)
    net64.train()
    relu_in = OrderedDict()
    for name, m in net64.named_modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out, p=name: relu_in.__setitem__(p, inp[0].detach()))
    o = net64(a, b)
    (o * dy.double()).sum().backward()
    return o_eval, o.detach(), relu_in, net64


def write_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    out = lambda name: os.path.join(outdir, name)  # noqa: E731
    torch.manual_seed(zlib.crc32(b"pgn_unet/net"))  # only the (overwritten) default init draws from it

    net, save, nview = build()
    path = out("pgn_unet_legacy.pth")
    torch.save(save, path, _use_new_zipfile_serialization=False)
    canonical_legacy(path)
    got = torch.load(path)
    assert type(got) is OrderedDict and list(got) == list(save), path
    for k in save:
        assert same_view(got[k], save[k]), k

    x = torch.rand(N, 6, H, W, generator=gen_for("input"), dtype=torch.float32).half()
    dy = torch.randn(N, 3, H, W, generator=gen_for("dy"), dtype=torch.float32).half()
    o_eval, o, relu_in, net64 = compute(net, x.float(), dy)

    t = OrderedDict()
    t["x"], t["dy"] = x, dy
    t["o_eval"], t["o"] = o_eval.float(), o.float()
    assert len(relu_in) == 21, list(relu_in)
    npin = 0
    for name, a in relu_in.items():
        flat = a.flatten()
        idx = torch.nonzero(flat.abs() < PIN).flatten()
        t["pin." + name + ".index"] = idx.to(torch.int32)
        t["pin." + name + ".sign"] = torch.where(flat[idx] > 0, 1, -1).to(torch.int8)
        npin += idx.numel()
    for name, p in net64.named_parameters():
        g = p.grad.flatten()
        if g.numel() <= SAMPLE:
            idx = torch.arange(g.numel())
        else:
            perm = torch.randperm(g.numel(), generator=gen_for("sample/" + name))[:SAMPLE]
            am = int(g.abs().argmax())
            if am not in perm.tolist():
                perm[0] = am
            idx = perm.sort().values
        codes, scale = quantise(g[idx], g)
        t["gidx." + name] = idx.to(torch.int32)
        t["grad." + name] = codes
        t["grad_scale." + name] = scale
        t["grad_l2." + name] = torch.tensor([g.norm().item()], dtype=torch.float32)
        assert g.abs().max() > 0, name
    for name, m in net64.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            t["after." + name + ".running_mean"] = m.running_mean.float()
            t["after." + name + ".running_var"] = m.running_var.float()
    safetensors_py.write(out("pgn_unet.safetensors"), t, OrderedDict(
        generator=GENERATOR, torch_version=torch.__version__, compute_dtype="float64",
        state="pgn_unet_legacy.pth", input="rand(%d,6,%d,%d) rounded to F16" % (N, H, W),
        grad="grad.<key> (I16) * grad_scale.<key> at flat indices gidx.<key>; grad_l2.<key> = full L2 norm",
        grad_of="sum(o * dy), train mode", o_eval="eval mode, the state dict's running statistics",
        pins=str(npin), pin_threshold=repr(PIN), views=str(nview)))
    return o_eval, o, npin, relu_in


if __name__ == "__main__":
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    torch.set_num_threads(1)
    o_eval, o, npin, relu_in = write_all(outdir)
    print("o: max |o| %.4f, o_eval: max %.4f, pins %d" % (o.abs().max().item(), o_eval.abs().max().item(), npin))
    for k, a in relu_in.items():
        print("%-28s numel %8d  >0 %.2f  std %.3f" % (k, a.numel(), (a > 0).double().mean().item(), a.std().item()))
