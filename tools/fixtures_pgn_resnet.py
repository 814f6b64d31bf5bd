#!/usr/bin/env python3
"""Writes the pgn_resnet* fixtures: the PGN "ResNet-N" backbone of method.md section 3.1 (N = 4)
and the proxy head of section 2.4 (and the "direct" mode of section 2.8).

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_pgn_resnet.py [outdir=tests/fixtures]

tools/make_fixtures.py may import this module and call write_all(outdir). Files (documented in
tests/fixtures/README.md, section "pgn_resnet*"):

  pgn_resnet4_sd_legacy.pth   the replica's state dict (76 keys of pgn-checkpoint-keys.md 2.1, in
                              that order, with _metadata), torch legacy layout
  pgn_resnet4_v2_legacy.pth   the same inside a PGN "version 2" checkpoint dict (section 3.1),
                              legacy layout
  pgn_resnet.safetensors      input, train- and eval-mode outputs, upstream gradient, parameter
                              gradients (full for small tensors, a fixed subset + sums for the big
                              convolutions), BN running statistics after the train forward, mask
                              pins, and the proxy-head goldens

Size: ResNet-4 has 1,335,875 parameters (5.3 MB as float32 per file). To stay small, every conv
weight with more than 4096 elements is a strided *view* of a small random storage
(base.as_strided(size, stride, offset), as tools/fixtures_teacher.py does); torch.save stores the
view as it is, so each .pth file is ~0.13 MB, and a reader must honour size/stride/offset. The
gradients of those weights are not stored whole (1.3 M values): a fixed random subset of 2048
elements (indices stored), the sum over the input channels (shape [cout, 3, 3]) and max |g|.
Deterministic: every random tensor comes from a generator seeded by the CRC-32 of its name; legacy
storage keys are renamed canonically (fixtures_weights.canonical_legacy). Goldens are computed in
float64 from the stored float32 values and rounded to float32 when stored.
"""

import copy
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

GENERATOR = "tools/fixtures_pgn_resnet.py"
NUM_BLOCKS = 4
N, H, W = 2, 16, 16
PARAM_COUNTS = {4: 1335875, 6: 1927235, 8: 2518595}   # method.md 3.3
PIN = 5e-3          # LeakyReLU inputs with |x| < PIN get their float64 sign stored (mask pins)
SUBSET = 2048       # gradient elements stored for each big conv weight
BIG = 4096          # tensors with more elements get a strided-view weight and a subset gradient
KAPPA = 1.1         # proxy scale (backbone_to_grad_params.sigmoid.scale)
GRAD_SCALE = 0.025  # s for the ResNet PGNs
OUT_SCALE = 512.0   # "direct" mode's out_scale
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# pgn-checkpoint-keys.md 2.1, ResNet-4 (76 keys), one row per module: (prefix, kind, channels).
# conv rows: (prefix, "conv", (cin, cout, stride, bias)); bn rows: (prefix, "bn", c).
TABLE4 = [("model.0", "conv", (6, 64, 1, False)), ("model.1", "bn", 64),
          ("model.3", "conv", (64, 128, 2, False)), ("model.4", "bn", 128)]
for _b in range(6, 10):
    TABLE4 += [(f"model.{_b}.conv_block.0", "conv", (128, 128, 1, True)), (f"model.{_b}.conv_block.1", "bn", 128),
               (f"model.{_b}.conv_block.3", "conv", (128, 128, 1, True)), (f"model.{_b}.conv_block.4", "bn", 128)]
TABLE4 += [("model.11", "conv", (128, 64, 1, False)), ("model.12", "bn", 64), ("model.14", "conv", (64, 3, 1, True))]

# (s0, s1, s2, s3, offset) of each big conv weight's view, in state-dict order: s0, s1 coprime and
# different, s2 != s3, the nine taps c*s2 + d*s3 distinct (asserted).
STRIDES = {
    "model.3.weight": (5, 13, 4, 1, 3),
    "model.6.conv_block.0.weight": (7, 9, 2, 5, 11),
    "model.6.conv_block.3.weight": (3, 8, 5, 1, 2),
    "model.7.conv_block.0.weight": (4, 7, 1, 3, 6),
    "model.7.conv_block.3.weight": (5, 3, 2, 7, 1),
    "model.8.conv_block.0.weight": (2, 7, 3, 1, 9),
    "model.8.conv_block.3.weight": (6, 1, 4, 11, 4),
    "model.9.conv_block.0.weight": (3, 5, 4, 1, 7),
    "model.9.conv_block.3.weight": (2, 5, 3, 1, 0),
    "model.11.weight": (5, 2, 1, 4, 8),
}


def table_keys(table):
    out = []
    for prefix, kind, ch in table:
        if kind == "conv":
            cin, cout, _, bias = ch
            out.append((prefix + ".weight", [cout, cin, 3, 3]))
            if bias:
                out.append((prefix + ".bias", [cout]))
        else:
            out += [(prefix + "." + s, [ch]) for s in ("weight", "bias", "running_mean", "running_var")]
            out.append((prefix + ".num_batches_tracked", []))
    return out


# ---------------------------------------------------------------------------- the replica


class ResnetBlock(nn.Module):
    """archs/resnet_generator.py ResnetBlock with padding 'zero', BN, no dropout, use_bias=True,
    LeakyReLU(0.2): out = x + conv_block(x), no activation after the sum."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=True), nn.BatchNorm2d(dim), nn.LeakyReLU(0.2),
            nn.Conv2d(dim, dim, 3, padding=1, bias=True), nn.BatchNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResnetGenerator(input_nc=6, output_nc=3, down_channels=(64, 128), up_channels=(64,),
    num_blocks=N), method.md 3.1; forward(input, target) = model(cat([input, target], 1))."""

    def __init__(self, num_blocks):
        super().__init__()
        layers = [nn.Conv2d(6, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
                  nn.Conv2d(64, 128, 3, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2)]
        layers += [ResnetBlock(128) for _ in range(num_blocks)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(128, 64, 3, 1, 1, bias=False),
                   nn.BatchNorm2d(64), nn.LeakyReLU(0.2), nn.Conv2d(64, 3, 3, 1, 1, bias=True)]
        self.model = nn.Sequential(*layers)

    def forward(self, inp, target):
        return self.model(torch.cat([inp, target], dim=1))


def gen_for(name):
    g = torch.Generator()
    g.manual_seed(zlib.crc32(("pgn_resnet/" + name).encode()))
    return g


def uniform(name, shape, lo, hi):
    return torch.rand(*shape, generator=gen_for(name), dtype=torch.float32) * (hi - lo) + lo


def strided_weight(name, size, strides, bound):
    s0, s1, s2, s3, off = strides
    assert len({c * s2 + d * s3 for c in range(3) for d in range(3)}) == 9, name
    assert s0 != s1 and s2 != s3 and torch.gcd(torch.tensor(s0), torch.tensor(s1)).item() == 1, name
    stride = (s0, s1, s2, s3)
    need = off + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    base = uniform(name, (need + 3 + off % 5,), -bound, bound)
    return base.as_strided(size, stride, off)


def make_state(net):
    """The state dict to save: every tensor in its own storage; big conv weights strided views of
    small storages; conv tensors U(+-1/sqrt(fan_in)) as PyTorch's default init; BN weight
    U[0.5, 1.5), bias U[-0.2, 0.2), running_mean U[-0.1, 0.1), running_var U[0.5, 1.5),
    num_batches_tracked 3 + crc32(key) % 5 (int64). Carries the real state_dict's _metadata."""
    ref = net.state_dict()
    sd = OrderedDict()
    for key, t in ref.items():
        shape = tuple(t.shape)
        mod = key.rsplit(".", 1)[0]
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(3 + zlib.crc32(key.encode()) % 5, dtype=torch.int64)
        elif len(shape) == 4:
            bound = 1.0 / (shape[1] * 9) ** 0.5
            if t.numel() > BIG:
                sd[key] = strided_weight(key, shape, STRIDES[key], bound)
            else:
                sd[key] = uniform(key, shape, -bound, bound)
        elif isinstance(net.get_submodule(mod), nn.Conv2d):
            bound = 1.0 / (net.get_submodule(mod).in_channels * 9) ** 0.5
            sd[key] = uniform(key, shape, -bound, bound)
        else:
            lo, hi = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2), "running_mean": (-0.1, 0.1),
                      "running_var": (0.5, 1.5)}[key.rsplit(".", 1)[1]]
            sd[key] = uniform(key, shape, lo, hi)
    assert set(STRIDES) == {k for k, v in sd.items() if v.dim() == 4 and v.numel() > BIG}
    sd._metadata = ref._metadata
    return sd


def build():
    for nb, count in PARAM_COUNTS.items():
        torch.manual_seed(0)
        assert sum(p.numel() for p in ResnetGenerator(nb).parameters()) == count, nb
        keys = list(ResnetGenerator(nb).state_dict())
        assert len(keys) == 20 + 14 * nb and keys[-2] == f"model.{10 + nb}.weight", nb
    torch.manual_seed(zlib.crc32(b"pgn_resnet/net"))
    net = ResnetGenerator(NUM_BLOCKS)
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert got == table_keys(TABLE4), "state_dict differs from pgn-checkpoint-keys.md 2.1"
    sd = make_state(net)
    net.load_state_dict(sd)
    return net, sd


def checkpoint_v2(sd):
    """Pgn.get_checkpoint() (version 2) of the official code, pgn-checkpoint-keys.md 3.1."""
    return {
        "state_dict": sd,
        "backbone_type": "resnet",
        "backbone_params": {"down_channels": (64, 128), "up_channels": (64,), "num_blocks": NUM_BLOCKS,
                            "output_nc": 3},
        "backbone_to_grad_type": "proxy",
        "backbone_to_grad_params": {"type": "sigmoid", "sigmoid": {"scale": KAPPA}, "grad_type": "mse",
                                    "grad_scale": GRAD_SCALE},
        "version": 2,
    }


def check_load(path, want_sd):
    got = torch.load(path)
    if "state_dict" in got:
        got = got["state_dict"]
    assert list(got) == list(want_sd), path
    for k, v in want_sd.items():
        g = got[k]
        assert g.dtype == v.dtype and g.shape == v.shape and g.stride() == v.stride(), (path, k)
        assert g.storage_offset() == v.storage_offset() and torch.equal(g, v), (path, k)


# ---------------------------------------------------------------------------- proxy head


def norm(z):
    mean = torch.tensor(IMAGENET_MEAN, dtype=z.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=z.dtype).view(1, 3, 1, 1)
    return (z - mean) / std


def proxy_head(o, yhat, dp, dg, s):
    """The official 'proxy' head with autograd (float64): p = kappa * norm(sigmoid(o)); g = d/dyhat
    of (1/s) * mean_{c,h,w} (p - yhat)^2 per sample, with create_graph (yhat detached, so g depends
    on o through p only). Returns p, g, dL/do of L = sum(p*dp) + sum(g*dg), and dL/do of sum(p*dp)."""
    o = o.double().requires_grad_()
    yh = yhat.double().requires_grad_()
    p = KAPPA * norm(torch.sigmoid(o))
    loss = ((p - yh) ** 2).mean(dim=(1, 2, 3)).sum() / s
    (g,) = torch.autograd.grad(loss, yh, create_graph=True)
    (do_p,) = torch.autograd.grad((p * dp.double()).sum(), o, retain_graph=True)
    (do,) = torch.autograd.grad((p * dp.double()).sum() + (g * dg.double()).sum(), o)
    return p.detach(), g.detach(), do, do_p


def direct_head(o, yhat, dp, dg, s):
    """'direct' mode (method.md 2.8): o' = o / out_scale, p = yhat - o', g = 2 o' / (N s)."""
    o = o.double().requires_grad_()
    n = o[0].numel()
    o2 = o / OUT_SCALE
    p = yhat.double() - o2
    g = 2 * o2 / (n * s)
    (do,) = torch.autograd.grad((p * dp.double()).sum() + (g * dg.double()).sum(), o)
    return p.detach(), g.detach(), do


# ---------------------------------------------------------------------------- writing


def write_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    out = lambda name: os.path.join(outdir, name)  # noqa: E731

    net, sd = build()
    sd_path, v2_path = out("pgn_resnet4_sd_legacy.pth"), out("pgn_resnet4_v2_legacy.pth")
    torch.save(sd, sd_path, _use_new_zipfile_serialization=False)
    torch.save(checkpoint_v2(sd), v2_path, _use_new_zipfile_serialization=False)
    for path in (sd_path, v2_path):
        canonical_legacy(path)
        check_load(path, sd)

    yhat = torch.randn(N, 3, H, W, generator=gen_for("yhat"), dtype=torch.float32)
    target = torch.randn(N, 3, H, W, generator=gen_for("target"), dtype=torch.float32)
    do = torch.randn(N, 3, H, W, generator=gen_for("do"), dtype=torch.float32)
    net64 = copy.deepcopy(net).double()

    t = OrderedDict()
    t["yhat"], t["target"], t["do"] = yhat, target, do
    # Eval mode first, on the stored running statistics.
    net64.eval()
    with torch.no_grad():
        t["o_eval"] = net64(yhat.double(), target.double()).float()

    # Train mode: batch statistics; hooks keep every LeakyReLU input (a BN output) for the pins.
    net64.train()
    lrelu_in = OrderedDict()
    mods = list(net64.named_modules())
    for i, (name, m) in enumerate(mods):
        if isinstance(m, nn.BatchNorm2d) and i + 1 < len(mods) and isinstance(mods[i + 1][1], nn.LeakyReLU):
            m.register_forward_hook(lambda mod, inp, o_, p=name: lrelu_in.__setitem__(p, o_.detach()))
    o = net64(yhat.double(), target.double())
    (o * do.double()).sum().backward()
    t["o"] = o.detach().float()
    assert len(lrelu_in) == 3 + NUM_BLOCKS, list(lrelu_in)
    npin = 0
    for prefix, a in lrelu_in.items():
        flat = a.flatten()
        idx = torch.nonzero(flat.abs() < PIN).flatten()
        t["pin." + prefix + ".index"] = idx.to(torch.int32)
        t["pin." + prefix + ".sign"] = torch.where(flat[idx] > 0, 1, -1).to(torch.int8)
        npin += idx.numel()

    zero = []
    params = dict(net64.named_parameters())
    for name, p in params.items():
        g = p.grad
        if g.numel() > BIG:
            idx = torch.randperm(g.numel(), generator=gen_for("subset/" + name))[:SUBSET].sort().values
            t["grad." + name + ".index"] = idx.to(torch.int32)
            t["grad." + name + ".value"] = g.flatten()[idx].float()
            t["grad." + name + ".sum_in"] = g.sum(dim=1).float()
            t["grad." + name + ".absmax"] = g.abs().max().float().reshape(1)
        else:
            t["grad." + name] = g.float()
        # Conv biases right before a train-mode BN: exact gradient 0 (the BN subtracts the batch mean).
        sib = params.get(name[: -len("bias")] + "weight") if name.endswith(".bias") else None
        if sib is not None and sib.dim() == 4 and g.abs().max() < 1e-12 * sib.grad.abs().max():
            zero.append(name)
    assert len(zero) == 2 * NUM_BLOCKS, zero
    for name, m in net64.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            t["after." + name + ".running_mean"] = m.running_mean.float()
            t["after." + name + ".running_var"] = m.running_var.float()

    # Proxy head (sigmoid, kappa 1.1, s 0.025) and direct mode, on their own o (wider than the
    # net's, to reach the sigmoid's tails) and the same yhat.
    po = 2.5 * torch.randn(N, 3, H, W, generator=gen_for("proxy/o"), dtype=torch.float32)
    dp = torch.randn(N, 3, H, W, generator=gen_for("proxy/dp"), dtype=torch.float32)
    dg = torch.randn(N, 3, H, W, generator=gen_for("proxy/dg"), dtype=torch.float32)
    p, g, dop, dop_p = proxy_head(po, yhat, dp, dg, GRAD_SCALE)
    t["proxy.o"], t["proxy.dp"], t["proxy.dg"] = po, dp, dg
    t["proxy.p"], t["proxy.g"], t["proxy.do"], t["proxy.do_dp"] = p.float(), g.float(), dop.float(), dop_p.float()
    p, g, dod = direct_head(po, yhat, dp, dg, GRAD_SCALE)
    t["direct.p"], t["direct.g"], t["direct.do"] = p.float(), g.float(), dod.float()

    meta = OrderedDict(
        generator=GENERATOR, torch_version=torch.__version__, compute_dtype="float64",
        net="PGN ResNet-%d (method.md 3.1), %d parameters" % (NUM_BLOCKS, PARAM_COUNTS[NUM_BLOCKS]),
        num_blocks=str(NUM_BLOCKS), state="pgn_resnet4_sd_legacy.pth", grad_of="sum(o * do), train mode",
        eval="o_eval: eval mode on the stored running statistics, before the train forward",
        zero_grad=",".join(zero), pins=str(npin), pin_threshold=repr(PIN), subset=str(SUBSET),
        kappa=repr(KAPPA), grad_scale=repr(GRAD_SCALE), out_scale=repr(OUT_SCALE),
        proxy="p = kappa*norm(sigmoid(o)); g = 2(yhat - p)/(N s); do = d/do [sum(p dp) + sum(g dg)]; "
              "do_dp = d/do sum(p dp)",
        direct="o' = o/out_scale; p = yhat - o'; g = 2 o'/(N s); do = d/do [sum(p dp) + sum(g dg)]")
    safetensors_py.write(out("pgn_resnet.safetensors"), t, meta)
    return t, npin


if __name__ == "__main__":
    torch.set_num_threads(1)
    t, npin = write_all(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    print("o: max |o| %.4f; o_eval: max %.4f; pins %d" % (t["o"].abs().max(), t["o_eval"].abs().max(), npin))
