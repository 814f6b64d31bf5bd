#!/usr/bin/env python3
"""Regenerates the PyTorch golden fixtures the C engine tests compare against.

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/make_fixtures.py [outdir=tests/fixtures]

Writes layers.safetensors and adam_convnet.safetensors (documented in tests/fixtures/README.md)
and, if tools/fixtures_weights.py exists, its weights_* fixtures (likewise the teacher_* fixtures
of tools/fixtures_teacher.py, the dip_* / quality fixtures of tools/fixtures_dip.py and the PGN
fixtures of tools/fixtures_pgn_resnet.py / fixtures_pgn_unet.py, and fit.safetensors of
tools/fixtures_fit.py). The output
is byte-for-byte reproducible: every random tensor comes from a generator seeded by its case name,
and torch runs on one thread so reductions always sum in the same order.
"""

import json
import math
import os
import sys
import zlib
from collections import OrderedDict

# Must be set before torch loads OpenBLAS, whose own threads would otherwise fight OpenMP.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS)
import safetensors_py  # noqa: E402

GENERATOR = "tools/make_fixtures.py"


# --------------------------------------------------------------------------------------------
# Layer cases
#
# Inputs are drawn in float32 (what the C engine sees) but the forward and autograd backward run
# in float64 and are rounded to float32 only when stored: the goldens are then the correctly
# rounded answers for those inputs, not one more float32 implementation with its own rounding,
# so the C tests can use tight tolerances.
# --------------------------------------------------------------------------------------------


class Layers:
    def __init__(self):
        self.tensors = OrderedDict()
        self.meta = OrderedDict()

    def add(self, case, params, roles):
        assert case not in self.meta, case
        self.meta[case] = json.dumps(params, separators=(",", ":"))
        for role, t in roles.items():
            self.tensors[f"{case}.{role}"] = t.detach().to(torch.float32).contiguous()


def gen_for(case):
    """One generator per case, seeded by its name, so adding a case never changes the others."""
    g = torch.Generator()
    g.manual_seed(zlib.crc32(case.encode()))
    return g


def randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float32) * scale


def nonzero_randn(g, *shape, scale=1.0):
    # Activation derivatives are discontinuous at 0 (ReLU'(0) is a convention), so keep clear of it.
    x = randn(g, *shape, scale=scale)
    return torch.where(x.abs() < 1e-2, torch.full_like(x, 0.25), x)


def f64(*ts):
    """float64 leaves requiring grad, from the stored float32 values (the conversion is exact)."""
    return [t.double().requires_grad_(True) for t in ts]


def backward(y, leaves, g):
    """Random upstream gradient dy (float32 values) and the autograd gradients of all leaves."""
    dy = randn(g, *y.shape)
    grads = torch.autograd.grad(y, leaves, dy.double())
    return dy, grads


def conv_case(L, case, n, cin, h, w, cout, kh, kw, sh=1, sw=1, ph=0, pw=0, groups=1,
              pad_mode="zero", has_bias=True):
    g = gen_for(case)
    x = randn(g, n, cin, h, w)
    # 1/sqrt(fan_in) keeps outputs O(1) whatever the kernel size, so one tolerance fits all cases.
    wt = randn(g, cout, cin // groups, kh, kw, scale=1.0 / math.sqrt(cin // groups * kh * kw))
    b = randn(g, cout, scale=0.1) if has_bias else None
    leaves = f64(x, wt) + (f64(b) if has_bias else [])
    x64, w64 = leaves[0], leaves[1]
    b64 = leaves[2] if has_bias else None
    if pad_mode == "reflect":
        y = F.conv2d(F.pad(x64, (pw, pw, ph, ph), mode="reflect"), w64, b64, (sh, sw), 0, 1, groups)
    else:
        y = F.conv2d(x64, w64, b64, (sh, sw), (ph, pw), 1, groups)
    dy, grads = backward(y, leaves, g)
    roles = OrderedDict(x=x, w=wt)
    if has_bias:
        roles["b"] = b
    roles.update(y=y, dy=dy, dx=grads[0], dw=grads[1])
    if has_bias:
        roles["db"] = grads[2]
    params = OrderedDict(op="conv2d", n=n, cin=cin, h=h, w=w, cout=cout, kh=kh, kw=kw, sh=sh, sw=sw,
                         ph=ph, pw=pw, groups=groups, pad_mode=pad_mode, has_bias=int(has_bias))
    L.add(case, params, roles)


def batchnorm_case(L, case, n, c, h, w, eps, momentum, training):
    g = gen_for(case)
    # An offset and spread per channel so the normalisation is not close to the identity.
    x = randn(g, n, c, h, w) * (1.0 + torch.rand(1, c, 1, 1, generator=g) * 2.0) + randn(g, 1, c, 1, 1)
    gamma = 1.0 + randn(g, c, scale=0.2)
    beta = randn(g, c, scale=0.2)
    rm_in = randn(g, c, scale=0.3)
    rv_in = 0.5 + torch.rand(c, generator=g, dtype=torch.float32)  # strictly positive
    x64, g64, b64 = f64(x, gamma, beta)
    rm = rm_in.double().clone()
    rv = rv_in.double().clone()
    y = F.batch_norm(x64, rm, rv, g64, b64, training=bool(training), momentum=momentum, eps=eps)
    dy, (dx, dgamma, dbeta) = backward(y, [x64, g64, b64], g)
    roles = OrderedDict(x=x, gamma=gamma, beta=beta, running_mean_in=rm_in, running_var_in=rv_in, y=y,
                        running_mean_out=rm, running_var_out=rv, dy=dy, dx=dx, dgamma=dgamma, dbeta=dbeta)
    params = OrderedDict(op="batchnorm2d", n=n, c=c, h=h, w=w, eps=eps, momentum=momentum,
                         training=int(training))
    L.add(case, params, roles)


def unary_case(L, case, op, fn, x, extra=None):
    """Any one-input op: roles x, y, dy, dx."""
    g = gen_for(case + "/dy")
    (x64,) = f64(x)
    y = fn(x64)
    dy, (dx,) = backward(y, [x64], g)
    n, c, h, w = x.shape
    params = OrderedDict(op=op, n=n, c=c, h=h, w=w)
    params.update(extra or {})
    L.add(case, params, OrderedDict(x=x, y=y, dy=dy, dx=dx))


def check_first_max_rule(x, k, s, p):
    """Asserts PyTorch's max-pool picks the FIRST maximum in row-major window order, which is what
    the README promises and the C engine implements; a torch upgrade that changed it must fail here."""
    _, idx = F.max_pool2d(x.double(), k, s, p, return_indices=True)
    n, c, h, w = x.shape
    oh, ow = idx.shape[2:]
    for ni in range(n):
        for ci in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    best, best_i = -math.inf, None
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = oy * s - p + ky, ox * s - p + kx
                            if 0 <= iy < h and 0 <= ix < w and x[ni, ci, iy, ix] > best:
                                best, best_i = x[ni, ci, iy, ix].item(), iy * w + ix
                    assert idx[ni, ci, oy, ox].item() == best_i, "max-pool tie rule changed"


def binary_case(L, case, op, fn, a, b, extra=None):
    g = gen_for(case + "/dy")
    a64, b64 = f64(a, b)
    y = fn(a64, b64)
    dy, (da, db) = backward(y, [a64, b64], g)
    params = OrderedDict(op=op, n=a.shape[0], ca=a.shape[1], cb=b.shape[1], h=a.shape[2], w=a.shape[3])
    params.update(extra or {})
    L.add(case, params, OrderedDict(a=a, b=b, y=y, dy=dy, da=da, db=db))


def loss_case(L, case, op, fn, x, t):
    x64, t64 = f64(x, t)
    loss = fn(x64, t64)
    (dx,) = torch.autograd.grad(loss, [x64])  # upstream gradient 1: the loss's own gradient
    n, c, h, w = x.shape
    params = OrderedDict(op=op, n=n, c=c, h=h, w=w, reduction="mean")
    L.add(case, params, OrderedDict(x=x, t=t, loss=loss.reshape(1), dx=dx))


def make_layers():
    L = Layers()

    # -- convolutions --
    conv_case(L, "conv3x3_s1_p1_bias", 2, 4, 8, 8, 6, 3, 3, 1, 1, 1, 1)
    conv_case(L, "conv3x3_s2_p1_nobias", 2, 4, 9, 9, 5, 3, 3, 2, 2, 1, 1, has_bias=False)
    conv_case(L, "conv1x1", 2, 8, 6, 6, 4, 1, 1)
    conv_case(L, "conv5x5_dw_s1_p2", 2, 6, 9, 9, 6, 5, 5, 1, 1, 2, 2, groups=6)
    conv_case(L, "conv5x5_dw_s2_p2", 2, 6, 10, 11, 6, 5, 5, 2, 2, 2, 2, groups=6)
    conv_case(L, "conv3x3_grouped_g2", 2, 6, 7, 7, 8, 3, 3, 1, 1, 1, 1, groups=2)
    conv_case(L, "conv7x7_s2_p3", 2, 3, 16, 16, 8, 7, 7, 2, 2, 3, 3)
    conv_case(L, "conv3x3_reflect_p1", 2, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1, pad_mode="reflect")
    conv_case(L, "conv7x7_reflect_p3", 2, 3, 10, 10, 4, 7, 7, 1, 1, 3, 3, pad_mode="reflect")
    conv_case(L, "conv3x3_odd_7x9", 2, 5, 7, 9, 4, 3, 3, 1, 1, 1, 1)
    conv_case(L, "conv3x3_first_cin3", 2, 3, 16, 16, 16, 3, 3, 1, 1, 1, 1)
    # Non-square kernel / stride / padding, so a swapped h/w anywhere shows up.
    conv_case(L, "conv3x1_s2x1_p1x0", 2, 4, 9, 6, 5, 3, 1, 2, 1, 1, 0)

    # -- batch norm --
    batchnorm_case(L, "bn_train", 2, 5, 6, 7, 1e-5, 0.1, 1)
    batchnorm_case(L, "bn_eval", 2, 5, 6, 7, 1e-5, 0.1, 0)
    batchnorm_case(L, "bn_train_eps1e-3", 2, 5, 6, 7, 1e-3, 0.1, 1)

    # -- activations (x kept away from 0) --
    g = gen_for("activations")
    unary_case(L, "relu", "relu", F.relu, nonzero_randn(g, 2, 3, 5, 6))
    unary_case(L, "leaky_relu", "leaky_relu", lambda x: F.leaky_relu(x, 0.2), nonzero_randn(g, 2, 3, 5, 6),
               {"slope": 0.2})
    unary_case(L, "sigmoid", "sigmoid", torch.sigmoid, nonzero_randn(g, 2, 3, 5, 6, scale=3.0))
    unary_case(L, "tanh", "tanh", torch.tanh, nonzero_randn(g, 2, 3, 5, 6, scale=2.0))

    # -- pooling --
    g = gen_for("pooling")
    unary_case(L, "avgpool2x2_9x8", "avgpool2x2", lambda x: F.avg_pool2d(x, 2, 2), randn(g, 2, 3, 9, 8))
    unary_case(L, "avgpool2x2_8x6", "avgpool2x2", lambda x: F.avg_pool2d(x, 2, 2), randn(g, 2, 3, 8, 6))
    for case, x, (k, s, p) in [
        ("maxpool_k3_s2_p1", randn(g, 2, 3, 9, 8), (3, 2, 1)),
        ("maxpool_k2_s2_p0", randn(g, 2, 3, 8, 9), (2, 2, 0)),
        # Values in {0, 1}: nearly every window holds several equal maxima.
        ("maxpool_ties", (torch.rand(2, 3, 9, 8, generator=g) < 0.5).float(), (3, 2, 1)),
        ("maxpool_ties_k2", (torch.rand(2, 3, 8, 8, generator=g) < 0.5).float(), (2, 2, 0)),
    ]:
        check_first_max_rule(x, k, s, p)
        unary_case(L, case, "maxpool2d", lambda t, k=k, s=s, p=p: F.max_pool2d(t, k, s, p), x,
                   OrderedDict(k=k, s=s, p=p))

    # -- upsampling --
    g = gen_for("upsample")
    unary_case(L, "upsample_nearest2x", "upsample_nearest2x",
               lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), randn(g, 2, 3, 5, 6))
    unary_case(L, "upsample_bilinear2x", "upsample_bilinear2x",
               lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
               randn(g, 2, 3, 5, 6))

    # -- two-input ops --
    g = gen_for("binary")
    binary_case(L, "concat", "concat", lambda a, b: torch.cat([a, b], 1), randn(g, 2, 3, 5, 5),
                randn(g, 2, 4, 5, 5))
    binary_case(L, "add", "add", torch.add, randn(g, 2, 3, 5, 5), randn(g, 2, 3, 5, 5))

    # -- losses --
    g = gen_for("losses")
    x, t = randn(g, 2, 3, 5, 5), randn(g, 2, 3, 5, 5)
    # Every 7th target equals its input, so the L1 gradient's sign(0) = 0 convention is exercised.
    t_l1 = t.clone().view(-1)
    t_l1[::7] = x.view(-1)[::7]
    loss_case(L, "l1_loss", "l1_loss", F.l1_loss, x, t_l1.view_as(t))
    loss_case(L, "mse_loss", "mse_loss", F.mse_loss, randn(g, 2, 3, 5, 5), randn(g, 2, 3, 5, 5))

    meta = OrderedDict(torch_version=torch.__version__, generator=GENERATOR, compute_dtype="float64")
    for k in meta:
        assert k not in L.meta, k
    meta.update(L.meta)
    return L.tensors, meta


# --------------------------------------------------------------------------------------------
# 20-step Adam training run of a small conv net, all in float32 as the C engine trains.
# --------------------------------------------------------------------------------------------

STEPS = 20


def make_adam_convnet():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        c1=nn.Conv2d(3, 8, 3, padding=1, bias=False),  # BN right after cancels a bias
        bn=nn.BatchNorm2d(8, eps=1e-5, momentum=0.1),
        relu=nn.ReLU(),
        c2=nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        lrelu=nn.LeakyReLU(0.2),
        up=nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        c3=nn.Conv2d(8, 3, 1, bias=True),
    ))
    net.train()
    x = torch.randn(2, 3, 16, 16)
    t = torch.randn(2, 3, 16, 16)

    # num_batches_tracked is an int counter the C engine does not model (momentum is fixed).
    def state():
        return OrderedDict((k, v.detach().clone()) for k, v in net.state_dict().items()
                           if not k.endswith("num_batches_tracked"))

    out = OrderedDict(x=x, t=t)
    out.update((f"init.{k}", v) for k, v in state().items())

    params = list(net.parameters())
    # foreach=False pins the single-tensor Adam whose arithmetic order the README documents.
    opt = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    losses, norms = [], []
    for step in range(STEPS):
        opt.zero_grad()
        y = net(x)
        loss = F.mse_loss(y, t)
        loss.backward()
        if step == 0:
            # Step-0 output and raw gradients: lets a failing C run tell a wrong forward/backward
            # from a wrong optimiser without bisecting the 20 steps.
            out["step0.y"] = y.detach().clone()
            for name, p in net.named_parameters():
                out[f"step0.grad.{name}"] = p.grad.detach().clone()
        norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm=0.1).item())
        losses.append(loss.item())
        opt.step()

    out["losses"] = torch.tensor(losses, dtype=torch.float32)
    out["grad_norms"] = torch.tensor(norms, dtype=torch.float32)
    out.update((f"final.{k}", v) for k, v in state().items())
    meta = OrderedDict(torch_version=torch.__version__, generator=GENERATOR, steps=str(STEPS),
                       net="c1 conv3x3(3->8,p1,bias) bn(8) relu c2 conv3x3(8->8,s2,p1,nobias) "
                           "leaky_relu(0.2) upsample_bilinear2x(align_corners) c3 conv1x1(8->3,bias)",
                       loss="mse_loss(mean)", clip="clip_grad_norm_(max_norm=0.1)",
                       optim="Adam(lr=1e-2,betas=(0.9,0.999),eps=1e-8)")
    return out, meta


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(1)

    for fname, (tensors, meta) in [("layers.safetensors", make_layers()),
                                   ("adam_convnet.safetensors", make_adam_convnet())]:
        path = os.path.join(outdir, fname)
        size = safetensors_py.write(path, tensors, meta)
        print(f"wrote {path}: {len(tensors)} tensors, {size} bytes")

    # The other fixture families have generators of their own; run each so one command rebuilds all.
    import importlib

    for module, what in [("fixtures_weights", "weights_*"), ("fixtures_teacher", "teacher_*"),
                         ("fixtures_dip", "dip_* and quality"), ("fixtures_pgn_resnet", "pgn_resnet*"),
                         ("fixtures_pgn_unet", "pgn_unet*"), ("fixtures_autoencoder", "autoencoder*"),
                         ("fixtures_fit", "fit.safetensors")]:  # last: it starts from the weights above
        if os.path.exists(os.path.join(TOOLS, module + ".py")):
            importlib.import_module(module).write_all(outdir)
            print(f"wrote {what} fixtures (tools/{module}.py)")
        else:
            print(f"note: tools/{module}.py not present, {what} fixtures skipped")

if __name__ == "__main__":
    main()
