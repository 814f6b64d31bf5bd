#!/usr/bin/env python3
"""Writes the dip_* and quality fixtures: the Deep Image Prior skip net of method.md section 3.5
and the evaluation metrics of section 5.4.

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_dip.py [outdir=tests/fixtures]

tools/make_fixtures.py imports this module and calls write_all(outdir). Files (documented in
tests/fixtures/README.md, section "dip_* and quality"):

  dip_state.safetensors   the replica's state dict: the 181 keys of pgn-checkpoint-keys.md section
                          2.4, in that order (float tensors F16, num_batches_tracked I64 scalars)
  dip.safetensors         input x, train-mode output y, upstream gradient dy, every parameter
                          gradient (I16 + per-tensor scale), BN running statistics after the forward,
                          the float64 signs of the LeakyReLU inputs near zero (mask pins)
  quality.safetensors     two image pairs with L1, MSE, PSNR, SSIM goldens; two resize goldens

The replica is built the way the official code builds it (archs/deep_image_prior/skip.py with the
validation configuration; names as its patched Module.add gives them: Sequentials numbered from
1, Concat children 0 and 1, every conv an nn.Sequential(ReflectionPad2d, Conv2d)). Its state dict
keys and shapes are asserted equal to the table copied below from pgn-checkpoint-keys.md 2.4.

Why 128x128: the net halves the size five times. At 32x32 the deepest level is 1x1, where
ReflectionPad2d(1) raises ("Padding size should be less than the corresponding input dimension")
and train-mode BatchNorm raises too ("Expected more than 1 value per channel when training") --
the reference DIP cannot run at 32. 64x64 (deepest level 2x2) is the smallest size that runs, but
there the float32 noise floor against these float64 goldens is at the test's 1e-4 tolerance: the
deepest BNs normalise 4 values per channel and amplify rounding ~10x (measured, PyTorch float32 vs
float64 over 8 input seeds: output 3e-5..1e-4; the C engine: output 3e-5..6e-5, flip-free
gradients 4e-5..1.1e-4). At 128x128 (deepest level 4x4) both are 1e-5..5e-5.

The input: x ~ U[0, 1) rather than the DIP's U[0, 0.1). With U[0, 0.1) the first conv's output is
its bias (~0.1) plus a ~0.01 spatial variation, which its train-mode BN divides by its ~0.01
standard deviation: an order of magnitude of float32 precision lost at the very first layer (C
engine, 2 threads: output error 5.9e-5 and a zero-gradient bias at 1.8e-4 of its weight's
gradient; with U[0, 1): 1e-5 and 2e-6). Nothing in the net depends on the input's range.

Why F16 weights and I16 gradients: the net has 572,827 parameters; storing the state dict and the
gradients as F32 would take 4.6 MB. The weights are rounded to F16 before anything is computed (so
the F16 file holds them exactly), and each gradient is stored as round(g / s) in I16 with
s = max|g| / 32767 (value = I16 * s; quantisation error <= 1.6e-5 of max|g|).
x and dy are likewise rounded to F16 and stored as F16. Goldens are computed in float64 from the
stored values and rounded when stored.
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
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_py  # noqa: E402

GENERATOR = "tools/fixtures_dip.py"
N, H, W = 1, 128, 128   # see "Why 128x128" above
PARAM_COUNT = 572827
X_SCALE = 1.0           # x ~ U[0, X_SCALE) (the DIP's own input is U[0, 0.1); see "The input" above)
PIN = 5e-3              # LeakyReLU inputs with |x| < PIN get their float64 sign stored (see write_all)

# pgn-checkpoint-keys.md section 2.4, one row per module: (prefix, kind, channels).
# conv rows: (prefix, "conv", (cin, cout, k, stride)) -> keys prefix.weight [cout, cin, k, k], prefix.bias [cout]
# bn rows: (prefix, "bn", c) -> weight, bias, running_mean, running_var [c], num_batches_tracked []
TABLE = [
    ("1.1.1", "conv", (3, 8, 3, 2)), ("1.2", "bn", 8), ("1.4.1", "conv", (8, 8, 3, 1)), ("1.5", "bn", 8),
    ("1.7.1.1.1", "conv", (8, 16, 3, 2)), ("1.7.1.2", "bn", 16),
    ("1.7.1.4.1", "conv", (16, 16, 3, 1)), ("1.7.1.5", "bn", 16),
    ("1.7.1.7.1.1.1", "conv", (16, 32, 3, 2)), ("1.7.1.7.1.2", "bn", 32),
    ("1.7.1.7.1.4.1", "conv", (32, 32, 3, 1)), ("1.7.1.7.1.5", "bn", 32),
    ("1.7.1.7.1.7.1.0.1.1", "conv", (32, 4, 1, 1)), ("1.7.1.7.1.7.1.0.2", "bn", 4),
    ("1.7.1.7.1.7.1.1.1.1", "conv", (32, 64, 3, 2)), ("1.7.1.7.1.7.1.1.2", "bn", 64),
    ("1.7.1.7.1.7.1.1.4.1", "conv", (64, 64, 3, 1)), ("1.7.1.7.1.7.1.1.5", "bn", 64),
    ("1.7.1.7.1.7.1.1.7.1.0.1.1", "conv", (64, 4, 1, 1)), ("1.7.1.7.1.7.1.1.7.1.0.2", "bn", 4),
    ("1.7.1.7.1.7.1.1.7.1.1.1.1", "conv", (64, 128, 3, 2)), ("1.7.1.7.1.7.1.1.7.1.1.2", "bn", 128),
    ("1.7.1.7.1.7.1.1.7.1.1.4.1", "conv", (128, 128, 3, 1)), ("1.7.1.7.1.7.1.1.7.1.1.5", "bn", 128),
    ("1.7.1.7.1.7.1.1.7.2", "bn", 132), ("1.7.1.7.1.7.1.1.7.3.1", "conv", (132, 128, 3, 1)),
    ("1.7.1.7.1.7.1.1.7.4", "bn", 128), ("1.7.1.7.1.7.1.1.7.6.1", "conv", (128, 128, 1, 1)),
    ("1.7.1.7.1.7.1.1.7.7", "bn", 128),
    ("1.7.1.7.1.7.2", "bn", 132), ("1.7.1.7.1.7.3.1", "conv", (132, 64, 3, 1)), ("1.7.1.7.1.7.4", "bn", 64),
    ("1.7.1.7.1.7.6.1", "conv", (64, 64, 1, 1)), ("1.7.1.7.1.7.7", "bn", 64),
    ("1.7.1.7.2", "bn", 64), ("1.7.1.7.3.1", "conv", (64, 32, 3, 1)), ("1.7.1.7.4", "bn", 32),
    ("1.7.1.7.6.1", "conv", (32, 32, 1, 1)), ("1.7.1.7.7", "bn", 32),
    ("1.7.2", "bn", 32), ("1.7.3.1", "conv", (32, 16, 3, 1)), ("1.7.4", "bn", 16),
    ("1.7.6.1", "conv", (16, 16, 1, 1)), ("1.7.7", "bn", 16),
    ("2", "bn", 16), ("3.1", "conv", (16, 8, 3, 1)), ("4", "bn", 8), ("6.1", "conv", (8, 8, 1, 1)), ("7", "bn", 8),
    ("9.1", "conv", (8, 3, 1, 1)),
]


def table_keys():
    """The 181 (key, shape) pairs of the table, in state_dict order."""
    out = []
    for prefix, kind, ch in TABLE:
        if kind == "conv":
            cin, cout, k, _ = ch
            out += [(prefix + ".weight", [cout, cin, k, k]), (prefix + ".bias", [cout])]
        else:
            out += [(prefix + "." + s, [ch]) for s in ("weight", "bias", "running_mean", "running_var")]
            out.append((prefix + ".num_batches_tracked", []))
    return out


# ---------------------------------------------------------------------------- the replica


class Seq(nn.Sequential):
    """nn.Sequential with the DIP code's patched Module.add: children are named "1", "2", ..."""

    def add(self, module):
        self.add_module(str(len(self) + 1), module)


class Concat(nn.Module):
    """cat([m(x) for m in children], dim), children named "0", "1"; centre-crops to the smallest size."""

    def __init__(self, dim, *modules):
        super().__init__()
        self.dim = dim
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def forward(self, x):
        outs = [m(x) for m in self._modules.values()]
        h = min(o.shape[2] for o in outs)
        w = min(o.shape[3] for o in outs)
        crop = []
        for o in outs:
            dh, dw = (o.shape[2] - h) // 2, (o.shape[3] - w) // 2
            crop.append(o[:, :, dh:dh + h, dw:dw + w])
        return torch.cat(crop, dim=self.dim)


def conv(cin, cout, k, stride=1):
    # conv(..., pad='reflection'): ReflectionPad2d((k-1)/2) then Conv2d(padding=0, bias=True), numbered from 0.
    return nn.Sequential(nn.ReflectionPad2d((k - 1) // 2), nn.Conv2d(cin, cout, k, stride, padding=0, bias=True))


def act():
    return nn.LeakyReLU(0.2)


def skip_net(cin=3, cout=3, down=(8, 16, 32, 64, 128), up=(8, 16, 32, 64, 128), skip=(0, 0, 0, 4, 4)):
    """skip() with filter sizes 3/3/1, need_bias, stride downsampling, bilinear upsampling with
    align_corners=True, need1x1_up, need_sigmoid False (method.md 3.5)."""
    model = Seq()
    tmp = model
    depth = cin
    last = len(down) - 1
    for i in range(len(down)):
        deeper, skip_b = Seq(), Seq()
        tmp.add(Concat(1, skip_b, deeper) if skip[i] else deeper)
        tmp.add(nn.BatchNorm2d(skip[i] + (up[i + 1] if i < last else down[i])))
        if skip[i]:
            skip_b.add(conv(depth, skip[i], 1))
            skip_b.add(nn.BatchNorm2d(skip[i]))
            skip_b.add(act())
        deeper.add(conv(depth, down[i], 3, 2))
        deeper.add(nn.BatchNorm2d(down[i]))
        deeper.add(act())
        deeper.add(conv(down[i], down[i], 3))
        deeper.add(nn.BatchNorm2d(down[i]))
        deeper.add(act())
        main = Seq()
        if i == last:
            k = down[i]
        else:
            deeper.add(main)
            k = up[i + 1]
        deeper.add(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        tmp.add(conv(skip[i] + k, up[i], 3))
        tmp.add(nn.BatchNorm2d(up[i]))
        tmp.add(act())
        tmp.add(conv(up[i], up[i], 1))
        tmp.add(nn.BatchNorm2d(up[i]))
        tmp.add(act())
        depth = down[i]
        tmp = main
    model.add(conv(up[0], cout, 1))
    return model


def gen_for(name):
    g = torch.Generator()
    g.manual_seed(zlib.crc32(("dip/" + name).encode()))
    return g


def uniform(name, shape, lo, hi):
    return torch.rand(*shape, generator=gen_for(name), dtype=torch.float32) * (hi - lo) + lo


def build():
    """The replica with PyTorch's default init (seeded), BN affine parameters and running statistics
    then set to random values (so that loading and using each of them is tested), every float
    rounded to F16 precision."""
    torch.manual_seed(zlib.crc32(b"dip/net"))
    net = skip_net()
    sd = net.state_dict()
    got = [(k, list(v.shape)) for k, v in sd.items()]
    assert got == table_keys(), "state_dict differs from pgn-checkpoint-keys.md 2.4"
    nparams = sum(p.numel() for p in net.parameters())
    assert nparams == PARAM_COUNT, nparams
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(uniform(name + ".weight", (c,), 0.5, 1.5))
                m.bias.copy_(uniform(name + ".bias", (c,), -0.2, 0.2))
                m.running_mean.copy_(uniform(name + ".running_mean", (c,), -0.1, 0.1))
                m.running_var.copy_(uniform(name + ".running_var", (c,), 0.5, 1.5))
                m.num_batches_tracked.fill_(3 + zlib.crc32(name.encode()) % 5)
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return net


# ---------------------------------------------------------------------------- quality metrics

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gaussian_window(size=11, sigma=1.5):
    g = torch.tensor([math.exp(-((i - size // 2) ** 2) / (2 * sigma ** 2)) for i in range(size)], dtype=torch.float64)
    g = g / g.sum()
    return g[:, None] @ g[None, :]


def ssim(a, b, pad):
    """Per-image SSIM of float64 [n, c, h, w] batches: Gaussian window 11, sigma 1.5, per channel
    (groups = c), C1 = 0.01^2, C2 = 0.03^2, zero padding `pad` (5: the official code's
    pytorch_ssim-style map over the whole image; 0: only windows inside the image), mean of the
    map over (c, h, w)."""
    c = a.shape[1]
    win = gaussian_window().expand(c, 1, 11, 11).contiguous()
    conv = lambda t: F.conv2d(t, win, padding=pad, groups=c)  # noqa: E731
    mu1, mu2 = conv(a), conv(b)
    s11 = conv(a * a) - mu1 * mu1
    s22 = conv(b * b) - mu2 * mu2
    s12 = conv(a * b) - mu1 * mu2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    return m.mean(dim=(1, 2, 3))


def normalise(x):
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (x - mean) / std


def quality_tensors():
    t = OrderedDict()
    # A smooth random image (bilinear upsampling of coarse noise, so SSIM sees structure) and a
    # noisy, slightly shifted-in-tone copy; both clamped to [0, 1]. Batch of 2, non-square.
    coarse = uniform("quality/coarse", (2, 3, 7, 6), 0.0, 1.0)
    a = F.interpolate(coarse, size=(48, 40), mode="bilinear", align_corners=False)
    a = (a + 0.05 * torch.randn(2, 3, 48, 40, generator=gen_for("quality/texture"))).clamp(0, 1)
    b = (0.9 * a + 0.05 + 0.08 * torch.randn(2, 3, 48, 40, generator=gen_for("quality/noise"))).clamp(0, 1)
    t["a"], t["b"] = a, b
    ad, bd = a.double(), b.double()
    t["l1"] = (ad - bd).abs().mean(dim=(1, 2, 3)).float()
    mse = ((ad - bd) ** 2).mean(dim=(1, 2, 3))
    t["mse"] = mse.float()
    t["psnr"] = (10 * torch.log10(1.0 / mse)).float()
    t["ssim_unit"] = ssim(ad, bd, 0).float()
    t["ssim_unit_pad5"] = ssim(ad, bd, 5).float()
    an, bn = normalise(ad), normalise(bd)
    t["l1_norm"] = (an - bn).abs().mean(dim=(1, 2, 3)).float()
    t["mse_norm"] = ((an - bn) ** 2).mean(dim=(1, 2, 3)).float()
    t["ssim_paper"] = ssim(an, bn, 5).float()
    # Resize (bilinear, align_corners=False, no antialias), output sizes as torchvision's
    # Resize(size) for the shorter side: long = int(size * long / short).
    for name, shape, size in (("resize_down", (1, 3, 30, 45), 20), ("resize_up", (1, 3, 7, 5), 12)):
        x = uniform("quality/" + name, shape, 0.0, 1.0)
        h, w = shape[2], shape[3]
        oh, ow = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        t[name + ".in"] = x
        t[name + ".out"] = F.interpolate(x.double(), size=(oh, ow), mode="bilinear", align_corners=False).float()
    return t


# ---------------------------------------------------------------------------- writing


def quantise(g):
    """I16 codes and scale with g ~= codes * scale (scale = max|g| / 32767, 1 if g is all zero)."""
    m = g.abs().max().item()
    scale = m / 32767.0 if m > 0 else 1.0
    scale = float(torch.tensor(scale, dtype=torch.float32))  # the scale that is stored
    codes = torch.round(g / scale).clamp(-32767, 32767).to(torch.int16)
    return codes, torch.tensor([scale], dtype=torch.float32)


def write_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    out = lambda name: os.path.join(outdir, name)  # noqa: E731

    net = build()
    state = OrderedDict()
    for k, v in net.state_dict().items():
        state[k] = v.half() if v.is_floating_point() else v.to(torch.int64)
    safetensors_py.write(out("dip_state.safetensors"), state, OrderedDict(
        generator=GENERATOR, torch_version=torch.__version__, net="DIP skip (method.md 3.5), 572827 parameters"))

    # x and dy are rounded to F16 precision and stored as F16 (exactly).
    x = (torch.rand(N, 3, H, W, generator=gen_for("input"), dtype=torch.float32) * X_SCALE).half()
    dy = torch.randn(N, 3, H, W, generator=gen_for("dy"), dtype=torch.float32).half()
    net64 = net.double().train()
    # The inputs of every LeakyReLU (= the outputs of the BNs that feed one), for the mask pins.
    lrelu_in = OrderedDict()
    for name, m in net64.named_modules():
        if isinstance(m, nn.Sequential):
            for k, child in m._modules.items():
                nxt = m._modules.get(str(int(k) + 1)) if k.isdigit() else None
                if isinstance(child, nn.BatchNorm2d) and isinstance(nxt, nn.LeakyReLU):
                    prefix = (name + "." if name else "") + k
                    child.register_forward_hook(lambda mod, inp, out, p=prefix: lrelu_in.__setitem__(p, out.detach()))
    y = net64(x.double())
    (y * dy.double()).sum().backward()

    t = OrderedDict()
    t["x"], t["y"], t["dy"] = x, y.detach().float(), dy
    # LeakyReLU inputs within PIN of zero: a float32 forward lands on the other side of zero for
    # some of them, and each such flip of the LeakyReLU slope (1 <-> 0.2) moves the gradients by up
    # to ~1e-1 relative (measured with PyTorch float32 against these float64 goldens). The test
    # pins its masks there to the float64 signs (pin.<bn>.index: flat NCHW indices, I32;
    # pin.<bn>.sign: +1 / -1, I8), so that the gradients can be compared at 1e-4.
    npin = 0
    assert len(lrelu_in) == 22, len(lrelu_in)
    for prefix, a in lrelu_in.items():
        flat = a.flatten()
        idx = torch.nonzero(flat.abs() < PIN).flatten()
        t["pin." + prefix + ".index"] = idx.to(torch.int32)
        t["pin." + prefix + ".sign"] = torch.where(flat[idx] > 0, 1, -1).to(torch.int8)
        npin += idx.numel()
    params = dict(net64.named_parameters())
    zero = []
    for name, p in params.items():
        codes, scale = quantise(p.grad)
        t["grad." + name] = codes
        t["grad_scale." + name] = scale
        # Parameters whose gradient is zero in exact arithmetic, because a train-mode BN subtracts
        # the per-channel batch mean right after them: every conv bias feeding a BN (all but the
        # final conv's), and the bias of each BN that feeds a conv + BN (the BN after a concat /
        # upsample, `<container>.2`: a per-channel constant stays constant through the reflection-
        # padded conv). float64 leaves ~1e-14 of them; float32 leaves rounding noise.
        sibling = params[name[: -len("bias")] + "weight"] if name.endswith(".bias") else None
        if sibling is not None and p.grad.abs().max() < 1e-12 * sibling.grad.abs().max():
            zero.append(name)
    assert len(zero) == 22 + 5, zero
    for name, m in net64.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            t["after." + name + ".running_mean"] = m.running_mean.float()
            t["after." + name + ".running_var"] = m.running_var.float()
    assert y.abs().max() > 0.1
    safetensors_py.write(out("dip.safetensors"), t, OrderedDict(
        generator=GENERATOR, torch_version=torch.__version__, compute_dtype="float64", mode="train",
        state="dip_state.safetensors", input="rand(%d,3,%d,%d)*%g rounded to F16" % (N, H, W, X_SCALE),
        grad="grad.<key> (I16) * grad_scale.<key>", grad_of="sum(y * dy)", zero_grad=",".join(zero),
        pins=str(npin), pin_threshold=repr(PIN)))

    q = quality_tensors()
    safetensors_py.write(out("quality.safetensors"), q, OrderedDict(
        generator=GENERATOR, torch_version=torch.__version__, compute_dtype="float64",
        ssim="window 11, sigma 1.5, C1 0.01^2, C2 0.03^2, per channel, mean over c,h,w",
        mean=",".join(str(v) for v in IMAGENET_MEAN), std=",".join(str(v) for v in IMAGENET_STD)))
    return y, q


if __name__ == "__main__":
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    torch.set_num_threads(1)
    y, q = write_all(outdir)
    print("y: max |y| %.4f, mean %.4f" % (y.abs().max().item(), y.mean().item()))
    for k in ("l1", "mse", "psnr", "ssim_unit", "ssim_unit_pad5", "l1_norm", "mse_norm", "ssim_paper"):
        print(k, q[k].tolist())
