#!/usr/bin/env python3
"""Writes the teacher_* fixtures: the VGG-19 perceptual loss of method.md section 2.2.

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_teacher.py [outdir=tests/fixtures]

tools/make_fixtures.py imports this module and calls write_all(outdir). Files (documented in
tests/fixtures/README.md, section "teacher_*"):

  teacher_vgg19_legacy.pth     random VGG-19 weights, torchvision's key names, legacy torch.save layout
                               (as vgg19-dcbb9e9d.pth), with the unused features.30..34 and classifier.*
  teacher_vgg19_zip.pth        the 26 keys the loss uses (features.0 .. features.28), zip layout
  (the three bad files are the 26 used keys with one change each)
  teacher_vgg19_bad_shape.pth       legacy; features.5.weight is [128, 64, 5, 5]
  teacher_vgg19_missing_key.pth     legacy; no features.12.bias
  teacher_vgg19_unexpected_key.pth  legacy; an extra features.99.weight
  teacher.safetensors          inputs, per-sample losses, per-layer losses and gradients

The inputs are conditioned so that a float32 engine takes every ReLU and |.| decision of the float64
reference the same way (see "Conditioning of the inputs" below; progress goes to stderr).

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_teacher.py --scan [N=200]

prints the unrepaired conditioning margins of input seeds 0..N-1 and writes nothing.

The real weights are 548 MiB, so every weight here is a *strided view* of a small random storage
(torch.save keeps a view as storage + size + stride + offset): a few thousand floats make a
[512, 512, 3, 3] tensor. The loss and gradient are computed in float64 from the stored float32
values and rounded to float32 when stored. Deterministic: each random tensor has its own generator
seeded by the CRC-32 of its name, legacy storage keys are renamed to fixed ones
(fixtures_weights.canonical_legacy), and every torch file is read back with torch.load and compared
(values, sizes, strides, storage offsets and storage lengths) before the next is written.
"""

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

GENERATOR = "tools/fixtures_teacher.py"

# torchvision vgg19().features, indices 0..29: (index, cin, cout) of each conv; "P" = 2x2 pool.
CFG = [(0, 3, 64), (2, 64, 64), "P", (5, 64, 128), (7, 128, 128), "P",
       (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256), "P",
       (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512), "P", (28, 512, 512)]
CONVS = [c for c in CFG if c != "P"]
TAPS = ["relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
        "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1"]

# Weight views: features.<idx>.weight = base.as_strided((cout, cin, 3, 3), (s0, s1, s2, s3), offset)
# with base = u - mean(u), u uniform(-b, b), b = GAIN * sqrt(6 / (cin * 9)) (He-uniform), of length
# offset + max index + 1 + tail (tail = 3 + offset % 5 unused elements).
# s0 and s1 are coprime (filter a + s1 is filter a shifted by s0 input channels, never a copy of a
# neighbour), and the nine taps c * s2 + d * s3 (c, d in 0..2) are distinct in every kernel.
# Why the mean is subtracted: neighbouring filters overlap on most of the storage, so the filter
# sums (the response to the positive mean of a ReLU output) all share one sign; where it was
# negative, a layer killed ~95% of its outputs and the deep layers carried ~1% of the loss. Centred,
# 11-98% of the filter sums are positive and every ReLU output is 30-85% nonzero.
STRIDES = {  # idx: (s0, s1, s2, s3, offset)
    0: (11, 29, 3, 1, 5),
    2: (5, 13, 4, 1, 3),
    5: (7, 9, 2, 5, 11),
    7: (3, 8, 5, 1, 2),
    10: (4, 7, 1, 3, 6),
    12: (5, 3, 2, 7, 1),
    14: (2, 7, 3, 1, 9),
    16: (6, 1, 4, 11, 4),
    19: (3, 5, 4, 1, 7),
    21: (2, 5, 3, 1, 0),
    23: (5, 2, 1, 4, 8),
    25: (3, 4, 5, 2, 12),
    28: (4, 3, 2, 3, 10),
}
GAIN = 1.0
BIAS = 0.05


def gen_for(name):
    g = torch.Generator()
    g.manual_seed(zlib.crc32(("teacher/" + name).encode()))
    return g


def uniform(name, n, bound):
    return (torch.rand(n, generator=gen_for(name), dtype=torch.float32) * 2 - 1) * bound


def strided(name, size, stride, offset, bound, tail, center=False):
    """A view of a fresh random storage just long enough for it (plus `tail` unused elements).
    center: subtract the storage's mean (taken in float64, rounded to float32; float32 subtraction)."""
    need = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    base = uniform(name, need + tail, bound)
    if center:
        base = base - base.double().mean().float()
    return base.as_strided(size, stride, offset)


def conv_weight(name, cout, cin, strides, gain=GAIN, kh=3, kw=3):
    s0, s1, s2, s3, off = strides
    assert len({c * s2 + d * s3 for c in range(kh) for d in range(kw)}) == kh * kw, (name, strides)
    bound = gain * (6.0 / (cin * kh * kw)) ** 0.5
    return strided(name, (cout, cin, kh, kw), (s0, s1, s2, s3), off, bound, tail=3 + off % 5, center=True)


def make_used():
    """The 26 tensors the loss uses, in torchvision's state_dict order."""
    sd = OrderedDict()
    for idx, cin, cout in CONVS:
        sd[f"features.{idx}.weight"] = conv_weight(f"features.{idx}.weight", cout, cin, STRIDES[idx])
        sd[f"features.{idx}.bias"] = uniform(f"features.{idx}.bias", cout, BIAS)
    return sd


def expand1(name, *size):
    """A stride-0 expand of a 1-element storage."""
    return uniform(name, 1, 0.01).expand(*size)


def make_unused():
    """The keys vgg19-dcbb9e9d.pth holds beyond relu5_1, with their real shapes, as tiny views."""
    sd = OrderedDict()
    for idx in (30, 32, 34):
        # one 3x3 kernel (a 9-element storage) repeated over all (cout, cin) pairs
        sd[f"features.{idx}.weight"] = strided(f"features.{idx}.weight", (512, 512, 3, 3), (0, 0, 3, 1), 0, 0.02, 0)
        sd[f"features.{idx}.bias"] = expand1(f"features.{idx}.bias", 512)
    for idx, (out, inp) in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
        sd[f"classifier.{idx}.weight"] = expand1(f"classifier.{idx}.weight", out, inp)
        sd[f"classifier.{idx}.bias"] = expand1(f"classifier.{idx}.bias", out)
    return sd


class Vgg19Avg(nn.Module):
    """torchvision vgg19().features[:30] with every MaxPool2d(2, 2) replaced by AvgPool2d(2, 2).
    Module indices match torchvision's, so load_state_dict takes the features.* keys."""

    def __init__(self):
        super().__init__()
        mods = []
        for c in CFG:
            if c == "P":
                mods.append(nn.AvgPool2d(2, 2))
            else:
                idx, cin, cout = c
                assert len(mods) == idx, (len(mods), idx)
                mods += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
        assert len(mods) == 30
        self.features = nn.Sequential(*mods)

    def taps(self, x):
        out = []
        for m in self.features:
            x = m(x)
            if isinstance(m, nn.ReLU):
                out.append(x)
        return out


def perceptual(model, x, y):
    """Returns (loss [N], per-layer losses [N, 13], grad d(sum_i loss_i)/dx), all float64."""
    x = x.double().requires_grad_(True)
    with torch.no_grad():
        fy = model.taps(y.double())
    fx = model.taps(x)
    per = torch.stack([(a - b).abs().mean(dim=(1, 2, 3)) for a, b in zip(fx, fy)], dim=1)
    loss = per.sum(dim=1)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), per.detach(), grad


def build_model(sd):
    model = Vgg19Avg()
    model.load_state_dict(OrderedDict((k, v) for k, v in sd.items() if k.startswith("features.")), strict=True)
    model.double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def inputs(name, n, h, w, seed=0):
    """y = randn, x = y + 0.5 * randn (float32), from a generator seeded by CRC-32("teacher/" + name) + seed
    (seed 0 is the stream the fixture used before the conditioning search)."""
    g = torch.Generator()
    g.manual_seed(zlib.crc32(("teacher/" + name).encode()) + seed)
    y = torch.randn(n, 3, h, w, generator=g, dtype=torch.float32)
    x = y + 0.5 * torch.randn(n, 3, h, w, generator=g, dtype=torch.float32)
    return x, y


# ---- Conditioning of the inputs -----------------------------------------------------------------
# A float32 engine reproduces the float64 gradient only if it takes every decision of the loss the
# same way: each ReLU mask (forward and backward) and the sign of each |relu_l(x) - relu_l(y)|. The
# inputs are accepted only when, computed in float64 on the stored float32 values, for each of the
# 13 ReLUs l and every element
#   |z_l(x)| >= TAU * max|z_l(x)|   and   |z_l(y)| >= TAU * max|z_l(y)|        (z = pre-activation)
#   |relu_l(x) - relu_l(y)| >= TAU * max relu_l(x)   where relu_l(x) > 0 or relu_l(y) > 0
# (max over the whole batch of that layer; where both are 0 the difference is exactly 0 in any precision,
# and sign(0) = 0 is taken exactly). The float32 error of a pre-activation measured with PyTorch is
# 2e-7..2.5e-6 of its layer's max, so TAU = 2e-6 is about one float32 error.
# No seed passes by itself: the 6.2M checked quantities of the 2x64x64 pair give 55..108 (mean 80)
# violated inequalities per seed, the 1x48x80 pair 21..55 (mean 37), and over seeds 0..199 the best
# margin is 1.3e-7 (2x64x64) and 3.1e-7 (1x48x80), so even TAU = 1e-6 is out of reach (--scan shows
# this). So each seed's inputs are *repaired*: every violating pre-activation q is moved to the
# nearest value that clears its rules REPAIR_TARGET times over (a pre-activation stays on its side of
# 0, a difference on its side of relu_l(y)) by the minimum-norm float64 change of the input
# (min ||dv|| subject to J dv = target - q, J = the rows dq/dv, one per violation, per sample,
# solved by least squares), rounded to float32; y is
# repaired first (to the larger threshold TAU * max(max|z_l(y)|, max relu_l(x)), so that wherever x is
# inactive the difference -relu_l(y) is safe too), then x with y fixed; repeated until the check passes.
# Each round fixes its violations (to first order) and creates fewer new ones, nearby elements moved
# by the change. The inputs move by at most ~1e-4 (they are ~N(0, 1)). Seeds are tried in order
# 0, 1, ...; the first whose repair passes within REPAIR_ROUNDS rounds is taken (its number, the
# rounds and the margins reached are in the metadata).
TAU = 2e-6
REPAIR_TARGET = 4.0
REPAIR_ROUNDS = 12
MAX_SEEDS = 200


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def pre_activations(model, x, upto=len(TAPS)):
    """The pre-activations z_l of the first `upto` ReLUs (relu_l = max(z_l, 0))."""
    pre = []
    for m in model.features:
        if isinstance(m, nn.ReLU):
            pre.append(x)
            if len(pre) == upto:
                break
        x = m(x)
    return pre


def conditioning(model, x, y):
    """Float64 margins of (x, y): per layer (min |z(x)|/max|z(x)|, min |z(y)|/max|z(y)|,
    min over live elements of |relu(x) - relu(y)| / max relu(x)), and the pre-activations."""
    with torch.no_grad():
        zx, zy = pre_activations(model, x.double()), pre_activations(model, y.double())
    per = []
    for a, b in zip(zx, zy):
        ra, rb = a.clamp(min=0), b.clamp(min=0)
        live = (ra > 0) | (rb > 0)
        per.append(((a.abs() / a.abs().max()).min().item(), (b.abs() / b.abs().max()).min().item(),
                    ((ra - rb).abs()[live] / ra.max()).min().item()))
    return per, zx, zy


def nudge(model, v, fixes):
    """v (float32 [n, 3, h, w]) moved by the minimum-norm float64 change that adds delta to each listed
    pre-activation (layer, flat index into z_layer of the whole batch, delta), sample by sample (the
    samples do not interact); rounded to float32."""
    out = v.double().clone()
    upto = max(f[0] for f in fixes) + 1
    for i in range(v.shape[0]):
        vi = out[i:i + 1].clone().requires_grad_(True)
        pre = pre_activations(model, vi, upto)
        rows, rhs = [], []
        for layer, idx, delta in fixes:
            numel = pre[layer].numel()  # one sample's
            if idx // numel == i:
                (g,) = torch.autograd.grad(pre[layer].reshape(-1)[idx % numel], vi, retain_graph=True)
                rows.append(g.reshape(-1))
                rhs.append(delta)
        if rows:
            rhs = torch.tensor(rhs, dtype=torch.float64).unsqueeze(1)
            dv = torch.linalg.lstsq(torch.stack(rows), rhs, driver="gelsd").solution
            out[i] += dv.reshape(out[i].shape)
    return out.float()


def nearest(z, candidates):
    return min(candidates, key=lambda c: (abs(c - z), c))


def y_fixes(zx, zy):
    """y's violations of the stronger y rule, with the change that takes each to REPAIR_TARGET times
    its threshold on its own side of 0."""
    fixes = []
    for layer, (a, b) in enumerate(zip(zx, zy)):
        t = TAU * max(b.abs().max().item(), a.clamp(min=0).max().item())
        for idx in torch.nonzero(b.reshape(-1).abs() < t).reshape(-1).tolist():
            z = b.reshape(-1)[idx].item()
            fixes.append((layer, idx, (REPAIR_TARGET * t if z >= 0 else -REPAIR_TARGET * t) - z))
    return fixes


def x_fixes(zx, zy):
    """x's violations (y fixed), with the change to the nearest value z that is REPAIR_TARGET times
    clear of both rules: |z| >= K tp and, if z > 0, |z - relu(z_y)| >= K td."""
    fixes = []
    for layer, (a, b) in enumerate(zip(zx, zy)):
        tp, td = TAU * a.abs().max().item(), TAU * a.clamp(min=0).max().item()
        af, rb = a.reshape(-1), b.reshape(-1).clamp(min=0)
        bad = (af.abs() < tp) | ((af > 0) & ((af - rb).abs() < td))
        kp, kd = REPAIR_TARGET * tp, REPAIR_TARGET * td
        for idx in torch.nonzero(bad).reshape(-1).tolist():
            z, r = af[idx].item(), rb[idx].item()
            cands = [-kp] + ([kp] if abs(kp - r) >= kd else []) + [c for c in (r - kd, r + kd) if c >= kp]
            fixes.append((layer, idx, nearest(z, cands) - z))
    return fixes


def margin_summary(per):
    """(min pre-activation margin of x, of y, min difference margin) over the 13 layers."""
    return tuple(min(p[k] for p in per) for k in range(3))


def conditioned_inputs(model, name, n, h, w):
    """The first seed (0, 1, ...) whose inputs pass the conditioning check after at most REPAIR_ROUNDS
    repair rounds. Returns x, y, seed, rounds, per-layer margins."""
    for seed in range(MAX_SEEDS):
        x, y = inputs(name, n, h, w, seed)
        for rnd in range(REPAIR_ROUNDS + 1):
            per, zx, zy = conditioning(model, x, y)
            m = margin_summary(per)
            if min(m) >= TAU:
                log(f"{name} seed {seed}: conditioned after {rnd} repair rounds, margins "
                    f"pre(x) {m[0]:.3g} pre(y) {m[1]:.3g} diff {m[2]:.3g} (tau {TAU:g})")
                return x, y, seed, rnd, per
            if rnd == REPAIR_ROUNDS:
                break
            fy = y_fixes(zx, zy)
            fx = [] if fy else x_fixes(zx, zy)
            log(f"{name} seed {seed} round {rnd}: margins pre(x) {m[0]:.3g} pre(y) {m[1]:.3g} diff {m[2]:.3g}; "
                f"repairing {len(fy)} y / {len(fx)} x elements")
            if fy:
                y = nudge(model, y, fy)
            else:
                x = nudge(model, x, fx)
        log(f"{name} seed {seed}: not conditioned after {REPAIR_ROUNDS} repair rounds, next seed")
    raise RuntimeError(f"{name}: no seed in 0..{MAX_SEEDS - 1} could be conditioned")


def scan(model, count):
    """Study aid (--scan N): the unrepaired margins of seeds 0..N-1 and their violation counts at TAU."""
    for name, (n, h, w) in (("xy", (2, 64, 64)), ("xy_odd", (1, 48, 80))):
        best = 0.0
        for seed in range(count):
            x, y = inputs(name, n, h, w, seed)
            per, zx, zy = conditioning(model, x, y)
            m = margin_summary(per)
            best = max(best, min(m))
            nv = len(y_fixes(zx, zy)) + len(x_fixes(zx, zy))
            print(f"{name} seed {seed}: margins pre(x) {m[0]:.3g} pre(y) {m[1]:.3g} diff {m[2]:.3g}; "
                  f"~{nv} elements below tau", flush=True)
        print(f"{name}: best margin over seeds 0..{count - 1}: {best:.3g} (tau {TAU:g})", flush=True)


def same_view(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset()
            and a.storage().size() == b.storage().size()
            and torch.equal(torch.tensor(a.storage().tolist()), torch.tensor(b.storage().tolist()))
            and torch.equal(a, b))


def check_load(path, want):
    got = torch.load(path)
    assert type(got) is OrderedDict and list(got) == list(want), path
    for k in want:
        assert same_view(got[k], want[k]), (path, k)


def save(path, sd, legacy):
    if legacy:
        torch.save(sd, path, _use_new_zipfile_serialization=False)
        canonical_legacy(path)
    else:
        torch.save(sd, path)
    check_load(path, sd)


def write_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    out = lambda name: os.path.join(outdir, name)  # noqa: E731

    used = make_used()
    full = OrderedDict(used)
    full.update(make_unused())
    save(out("teacher_vgg19_legacy.pth"), full, legacy=True)
    save(out("teacher_vgg19_zip.pth"), used, legacy=False)

    bad = OrderedDict(used)
    bad["features.5.weight"] = conv_weight("bad/features.5.weight", 128, 64, (7, 9, 5, 1, 2), kh=5, kw=5)
    save(out("teacher_vgg19_bad_shape.pth"), bad, legacy=True)
    bad = OrderedDict((k, v) for k, v in used.items() if k != "features.12.bias")
    save(out("teacher_vgg19_missing_key.pth"), bad, legacy=True)
    bad = OrderedDict(used)
    bad["features.99.weight"] = conv_weight("bad/features.99.weight", 64, 64, (5, 3, 1, 3, 0))
    save(out("teacher_vgg19_unexpected_key.pth"), bad, legacy=True)

    model = build_model(used)
    tensors = OrderedDict()
    summary = []
    conditioned = OrderedDict()
    for suffix, (n, h, w) in (("", (2, 64, 64)), ("_odd", (1, 48, 80))):
        x, y, seed, rounds, margins = conditioned_inputs(model, "xy" + suffix, n, h, w)
        m = margin_summary(margins)
        conditioned["xy" + suffix] = (seed, rounds, m)
        loss, per, grad = perceptual(model, x, y)
        tensors["x" + suffix] = x
        tensors["y" + suffix] = y
        tensors["loss" + suffix] = loss.float()
        tensors["loss_taps" + suffix] = per.float()
        tensors["grad" + suffix] = grad.float()
        summary.append((suffix, loss, per, grad))
        # The weights must keep every layer alive and contributing (see STRIDES).
        assert ((0.1 < loss) & (loss < 10)).all() and (per > 0.01).all(), (suffix, per)
    meta = OrderedDict(generator=GENERATOR, torch_version=torch.__version__, weights="teacher_vgg19_legacy.pth",
                       pool="avg2x2", layers="relu1_1..relu5_1 (13)", compute_dtype="float64",
                       conditioning_tau=f"{TAU:g}")
    for name, (seed, rounds, m) in conditioned.items():
        meta[f"seed_{name}"] = str(seed)
        meta[f"repair_rounds_{name}"] = str(rounds)
        meta[f"margins_{name}"] = f"pre_x {m[0]:.3g} pre_y {m[1]:.3g} diff {m[2]:.3g}"
    safetensors_py.write(out("teacher.safetensors"), tensors, meta)
    return summary


def report(model, x):
    """Debug aid: activation statistics per tap (fraction > 0, mean, max)."""
    with torch.no_grad():
        for name, t in zip(TAPS, model.taps(x.double())):
            print(f"  {name:8s} {tuple(t.shape[1:])!s:16s} nz {(t > 0).double().mean():.3f} "
                  f"mean {t.mean():.4g} max {t.max():.4g}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    if len(sys.argv) > 1 and sys.argv[1] == "--scan":
        scan(build_model(make_used()), int(sys.argv[2]) if len(sys.argv) > 2 else 200)
        sys.exit(0)
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    for suffix, loss, per, grad in write_all(outdir):
        print(f"loss{suffix} = {loss.tolist()}")
        for i in range(per.shape[0]):
            print("  taps[%d] = %s" % (i, " ".join(f"{v:.4g}" for v in per[i].tolist())))
        print(f"  |grad| max {grad.abs().max():.4g} mean {grad.abs().mean():.4g}")
    if os.environ.get("TEACHER_REPORT"):
        model = build_model(make_used())
        report(model, inputs("xy", 2, 64, 64)[0])
