#!/usr/bin/env python3
"""Writes the autoencoder* fixtures: the three PGN-training autoencoders of method.md section 3.4
(state-dict keys: pgn-checkpoint-keys.md section 2.3), max_layer 0, 1 and 2.

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_autoencoder.py [outdir=tests/fixtures]

write_all(outdir) writes, for L = 0, 1, 2:

  autoencoder<L>_legacy.pth      the replica's state dict, torch legacy layout (the 16 / 34 / 53 keys
                                 of 2.3 in that order; conv weights with more than 2048 elements are
                                 strided views of small storages, as in the pgn_unet fixture)
  autoencoder<L>.safetensors     input x [2, 3, 32, 32], upstream gradient dy, eval- and train-mode
                                 outputs, parameter gradients of sum(o * dy) in train mode (sampled,
                                 I16 + scale, with each full tensor's L2 norm), BN running statistics
                                 after the train forward, ReLU mask pins

The replica is built from the spec (archs/autoencoder.py's Autoencoder("doubleblaze", "sep",
max_layer): one nn.Sequential named `model`). Its state_dict keys and shapes are asserted equal to
the table of 2.3, and its parameter count to 54,019 / 111,491 / 408,195.

Size 32x32: the input must be a multiple of 2^(max_layer+1) (8 for max_layer 2); at 32 the deepest
level of max_layer 2 is 4x4, so with batch 2 its train-mode BNs see 32 values per channel.

Weights, rounding and gradient sampling follow tools/fixtures_pgn_unet.py (He-uniform F16-rounded
conv weights, conv biases U(-0.1, 0.1), BN weight U[0.5, 1.5), bias U[-0.2, 0.2), running_mean
U[-0.1, 0.1), running_var U[0.5, 1.5), num_batches_tracked 3 + crc32(name) % 5). Gradients: up to
SAMPLE elements per tensor (always including the arg-max of |g|), I16 codes with a per-tensor scale
max|g| / 32767 over the FULL tensor, plus the full L2 norm. ReLU inputs within PIN of zero get their
float64 sign stored (pin.<relu>.index / .sign). Everything is computed in float64 from the stored
values. Deterministic: every random tensor comes from a generator seeded by the CRC-32 of its name.
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

GENERATOR = "tools/fixtures_autoencoder.py"
N, H, W = 2, 32, 32
PARAM_COUNT = {0: 54019, 1: 111491, 2: 408195}
KEY_COUNT = {0: 16, 1: 34, 2: 53}
PIN = 2e-3
SAMPLE = 256
VIEW_MIN = 2048
# decoder seps (cin, cout) after each up x2, by max_layer (method.md 3.4)
DEC = {0: [(128, 128)], 1: [(128, 128), (128, 128)], 2: [(256, 256), (256, 128), (128, 128)]}


# pgn-checkpoint-keys.md section 2.3: (prefix, kind, spec); conv: (cin, cout, k, stride, groups, bias)
def _sep_rows(prefix, cin, cout, k):
    return [(prefix + ".0", "conv", (cin, cout, k, 1, math.gcd(cin, cout), True)),
            (prefix + ".1", "conv", (cout, cout, 1, 1, 1, True))]


def _blaze_rows(p, ci, co, s):
    rows = [(p + ".cdw1", "conv", (ci, co, 5, s, ci, False)), (p + ".cpw1", "conv", (co, co, 1, 1, 1, False)),
            (p + ".cdw2", "conv", (co, co, 5, 1, co, False)), (p + ".cpw2", "conv", (co, co, 1, 1, 1, False)),
            (p + ".bn1", "bn", co), (p + ".bn2", "bn", co)]
    if s == 2:
        rows.append((p + ".c1", "conv", (ci, co, 1, 2, 1, False)))
    return rows


def table(max_layer):
    rows = [("model.0.0", "conv", (3, 128, 7, 2, 1, False)), ("model.0.1", "bn", 128)]
    dec = DEC[max_layer]
    c, idx = 128, 1
    if max_layer >= 1:
        rows += _blaze_rows("model.1.1", 128, 128, 1)
        idx = 2
    if max_layer >= 2:
        rows += _blaze_rows("model.2", 128, 256, 2)
        c, idx = 256, 3
    rows += _sep_rows("model.%d" % idx, c, c, 1)
    idx += 1
    for ci, co in dec:
        idx += 1  # Upsample
        rows += _sep_rows("model.%d" % idx, ci, co, 3)
        idx += 1
    rows.append(("model.%d" % idx, "conv", (128, 3, 1, 1, 1, True)))
    return rows


def table_keys(max_layer):
    out = []
    for prefix, kind, spec in table(max_layer):
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


class Autoencoder(nn.Module):
    def __init__(self, max_layer):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, 128, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(128),
                                nn.ReLU())]
        c = 128
        if max_layer >= 1:
            layers.append(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), DoubleBlazeBlock(128, 128, 1)))
        for _ in range(2, max_layer + 1):
            layers.append(DoubleBlazeBlock(c, 2 * c, 2))
            c *= 2
        layers.append(sep(c, c, 1, 0))
        up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)  # one shared object
        for cin, cout in DEC[max_layer]:
            layers += [up, sep(cin, cout, 3, 1)]
        layers.append(nn.Conv2d(128, 3, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def gen_for(name):
    g = torch.Generator()
    g.manual_seed(zlib.crc32(("autoencoder/" + name).encode()))
    return g


def uniform(name, shape, lo, hi):
    return torch.rand(*shape, generator=gen_for(name), dtype=torch.float32) * (hi - lo) + lo


def f16(t):
    return t.half().float()


S01 = [(3, 2), (5, 3), (2, 5), (7, 3), (4, 3), (5, 2), (3, 4), (2, 3), (5, 4), (3, 5), (7, 2), (4, 5)]


def weight_view(index, name, shape, fan_in):
    cout, cin_g, k, _ = shape
    bound = math.sqrt(6.0 / fan_in)
    s0, s1 = S01[index % len(S01)]
    s2 = k + 1 if k > 1 else 1
    assert len({c * s2 + d for c in range(k) for d in range(k)}) == k * k
    off = index % 7
    tail = 3 + off % 5
    size, stride = (cout, cin_g, k, k), (s0, s1, s2, 1)
    need = off + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    base = uniform(name, (need + tail,), -bound, bound)
    base = f16(base - base.double().mean().float())
    return base.as_strided(size, stride, off)


def build(max_layer):
    net = Autoencoder(max_layer)
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert got == table_keys(max_layer), ("state_dict differs from pgn-checkpoint-keys.md 2.3", got)
    assert len(got) == KEY_COUNT[max_layer]
    nparams = sum(p.numel() for p in net.parameters())
    assert nparams == PARAM_COUNT[max_layer], nparams
    save = OrderedDict()
    nview = 0
    pre = "ae%d/" % max_layer
    with torch.no_grad():
        modules = dict(net.named_modules())
        for prefix, kind, spec in table(max_layer):
            m = modules[prefix]
            if kind == "conv":
                shape = tuple(m.weight.shape)
                fan_in = shape[1] * shape[2] * shape[3]
                if m.weight.numel() > VIEW_MIN:
                    w = weight_view(nview, pre + prefix + ".weight", shape, fan_in)
                    nview += 1
                else:
                    b = math.sqrt(6.0 / fan_in)
                    w = f16(uniform(pre + prefix + ".weight", shape, -b, b))
                m.weight.copy_(w)
                save[prefix + ".weight"] = w
                if m.bias is not None:
                    m.bias.copy_(f16(uniform(pre + prefix + ".bias", (shape[0],), -0.1, 0.1)))
                    save[prefix + ".bias"] = m.bias.detach().clone()
            else:
                c = spec
                m.weight.copy_(f16(uniform(pre + prefix + ".weight", (c,), 0.5, 1.5)))
                m.bias.copy_(f16(uniform(pre + prefix + ".bias", (c,), -0.2, 0.2)))
                m.running_mean.copy_(f16(uniform(pre + prefix + ".running_mean", (c,), -0.1, 0.1)))
                m.running_var.copy_(f16(uniform(pre + prefix + ".running_var", (c,), 0.5, 1.5)))
                m.num_batches_tracked.fill_(3 + zlib.crc32((pre + prefix).encode()) % 5)
                for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    save[prefix + "." + s] = getattr(m, s).detach().clone()
    assert list(save) == [k for k, _ in table_keys(max_layer)]
    return net, save, nview


def quantise(g, scale_of):
    m = scale_of.abs().max().item()
    scale = m / 32767.0 if m > 0 else 1.0
    scale = float(torch.tensor(scale, dtype=torch.float32))
    codes = torch.round(g / scale).clamp(-32767, 32767).to(torch.int16)
    return codes, torch.tensor([scale], dtype=torch.float32)


def write_one(outdir, max_layer):
    pre = "ae%d/" % max_layer
    torch.manual_seed(zlib.crc32(("autoencoder/net%d" % max_layer).encode()))
    net, save, nview = build(max_layer)
    path = os.path.join(outdir, "autoencoder%d_legacy.pth" % max_layer)
    torch.save(save, path, _use_new_zipfile_serialization=False)
    canonical_legacy(path)
    got = torch.load(path)
    assert type(got) is OrderedDict and list(got) == list(save), path
    for k in save:
        assert torch.equal(got[k], save[k]), k

    x = torch.randn(N, 3, H, W, generator=gen_for(pre + "input"), dtype=torch.float32).half()
    dy = torch.randn(N, 3, H, W, generator=gen_for(pre + "dy"), dtype=torch.float32).half()
    net64 = net.double()
    net64.eval()
    with torch.no_grad():
        o_eval = net64(x.double())
    net64.train()
    relu_in = OrderedDict()
    for name, m in net64.named_modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out, p=name: relu_in.__setitem__(p, inp[0].detach()))
    o = net64(x.double())
    (o * dy.double()).sum().backward()
    assert o.shape == (N, 3, H, W)

    t = OrderedDict()
    t["x"], t["dy"] = x, dy
    t["o_eval"], t["o"] = o_eval.float(), o.detach().float()
    assert len(relu_in) == {0: 3, 1: 6, 2: 9}[max_layer], list(relu_in)
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
            perm = torch.randperm(g.numel(), generator=gen_for(pre + "sample/" + name))[:SAMPLE]
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
    safetensors_py.write(os.path.join(outdir, "autoencoder%d.safetensors" % max_layer), t, OrderedDict(
        generator=GENERATOR, torch_version=torch.__version__, compute_dtype="float64", max_layer=str(max_layer),
        state="autoencoder%d_legacy.pth" % max_layer, input="randn(%d,3,%d,%d) rounded to F16" % (N, H, W),
        grad="grad.<key> (I16) * grad_scale.<key> at flat indices gidx.<key>; grad_l2.<key> = full L2 norm",
        grad_of="sum(o * dy), train mode", o_eval="eval mode, the state dict's running statistics",
        pins=str(npin), pin_threshold=repr(PIN), views=str(nview)))
    return o, npin, relu_in


def write_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    res = {}
    for L in (0, 1, 2):
        res[L] = write_one(outdir, L)
    return res


if __name__ == "__main__":
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    torch.set_num_threads(1)
    for L, (o, npin, relu_in) in write_all(outdir).items():
        print("max_layer %d: max |o| %.4f, pins %d" % (L, o.abs().max().item(), npin))
        for k, a in relu_in.items():
            print("  %-20s numel %7d  >0 %.2f  std %.3f" % (k, a.numel(), (a > 0).double().mean().item(),
                                                           a.std().item()))
