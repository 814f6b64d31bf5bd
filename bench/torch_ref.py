#!/usr/bin/env python3
"""PyTorch side of `make bench`: the figures the C engine is compared with.

    OPENBLAS_NUM_THREADS=1 command -p python3 bench/torch_ref.py MODE [--reps 7] [--threads 2]
        MODE: conv3x3 | vgg_perceptual [--size 256] [--batch 1] | fit_step [--size 64] [--batch 6]
              | rss_baseline | dip_step [--arm mse|vgg|pgn] [--size 128]

The caller runs each mode in its own process so that the peak RSS reported is that mode's alone.
stdout carries only `bench <name> <value> <unit>` lines (parsed by bench/run.sh); anything else goes
to stderr. Timings: 2 warm-up runs, then --reps timed runs, median reported.
"""

import argparse
import os
import resource
import statistics
import sys
import time

# Before torch loads: OpenBLAS's own pthreads would otherwise compete with the OpenMP threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

WARMUPS = 2


def emit(name, value, unit):
    print(f"bench {name} {value:.3f} {unit}", flush=True)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def median_ms(fn, reps):
    for _ in range(WARMUPS):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


# ---------------------------------------------------------------------------------------------
# conv3x3: one 64->64 3x3 layer, forward and the two backward halves timed separately, because the
# C engine runs them as separate primitives (data gradient for the perceptual loss, weight gradient
# only when training).
# ---------------------------------------------------------------------------------------------

def bench_conv3x3(args):
    torch.manual_seed(0)
    c, hw = 64, 128
    x = torch.randn(1, c, hw, hw)
    w = torch.randn(c, c, 3, 3) * (1.0 / (c * 9) ** 0.5)
    b = torch.randn(c)
    dy = torch.randn(1, c, hw, hw)
    flops = 2.0 * c * c * 9 * hw * hw

    # aten::convolution_backward (present in 1.13) with an output mask computes exactly one of the
    # gradients, as a C engine's backward-data / backward-weights primitive does; going through
    # autograd would add graph bookkeeping and compute all requested grads together.
    def bwd(mask):
        return torch.ops.aten.convolution_backward(dy, x, w, [c], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
        fwd_ms = median_ms(lambda: F.conv2d(x, w, b, 1, 1), args.reps)
        data_ms = median_ms(lambda: bwd([True, False, False]), args.reps)
        weights_ms = median_ms(lambda: bwd([False, True, False]), args.reps)

    for tag, ms in (("fwd", fwd_ms), ("bwd_data", data_ms), ("bwd_weights", weights_ms)):
        emit(f"torch_conv3x3_{tag}_ms", ms, "ms")
    for tag, ms in (("fwd", fwd_ms), ("bwd_data", data_ms), ("bwd_weights", weights_ms)):
        emit(f"torch_conv3x3_{tag}_gflops", flops / (ms * 1e-3) / 1e9, "GFLOP/s")


# ---------------------------------------------------------------------------------------------
# vgg_perceptual: the perceptual-loss gradient the daemon computes per image. torchvision is not
# installed, so VGG-19's features are rebuilt here as torchvision's make_layers(cfgs["E"]) does.
# ---------------------------------------------------------------------------------------------

VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M"]
VGG_MODULES = 30  # features[:30] ends at relu5_1


def vgg19_features_avgpool():
    layers, cin = [], 3
    for v in VGG19_CFG:
        if v == "M":
            # The perceptual loss uses average pooling (smoother gradients than max-pool).
            layers.append(nn.AvgPool2d(2, 2))
        else:
            conv = nn.Conv2d(cin, v, 3, padding=1)
            # torchvision VGG's init; the values do not matter for timing but keep activations sane.
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            # inplace=False: the tapped ReLU outputs must survive the next layer.
            layers += [conv, nn.ReLU(inplace=False)]
            cin = v
    net = nn.Sequential(*layers[:VGG_MODULES])
    assert sum(isinstance(m, nn.ReLU) for m in net) == 13
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def vgg_taps(net, x):
    taps = []
    for m in net:
        x = m(x)
        if isinstance(m, nn.ReLU):
            taps.append(x)
    return taps


def bench_vgg_perceptual(args):
    torch.manual_seed(0)
    net = vgg19_features_avgpool()
    x0 = torch.rand(args.batch, 3, args.size, args.size)
    target = torch.rand(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        target_feats = vgg_taps(net, target)  # cached once, as the daemon caches the target's

    def step():
        x = x0.detach().requires_grad_(True)
        loss = sum((f - tf).abs().mean() for f, tf in zip(vgg_taps(net, x), target_feats))
        (g,) = torch.autograd.grad(loss, x)
        return g

    ms = median_ms(step, args.reps)
    tag = f"{args.size}" if args.batch == 1 else f"{args.batch}x{args.size}"
    emit(f"torch_vgg_perceptual_{tag}_ms", ms, "ms")
    emit(f"torch_vgg_perceptual_{tag}_peak_rss_mb", peak_rss_mb(), "MB")


# ---------------------------------------------------------------------------------------------
# fit_step: one online PGN fit step (pgn/fit.h), float32, the replica of tools/fixtures_fit.py
# (FitReplica: the same code that writes tests/fixtures/fit.safetensors in float64): UNet PGN and
# the three autoencoders freshly default-initialised (seed 0), a random VGG-19 teacher (the kaiming
# init above), random smooth targets. Like the official PerceptualLoss, the teacher recomputes the
# target's features on each of its 2 calls (g_true at y_hat, then P(p, y)): target features twice.
# Split (time.perf_counter around each phase): ae = autoencoder forwards + their backward, clip and
# Adam; pgn_fwd = PGN forward + sigmoid head; teacher = g_true (VGG forward + backward to y_hat) and
# P(p, y) with dP/dp (VGG forward + backward to p), target features computed in each; pgn_bwd = the
# loss, the backward through the head and the PGN (dP/dp handed in, as pgn/fit.h does), clip, Adam.
# ---------------------------------------------------------------------------------------------

PHASES = ("ae", "pgn_fwd", "teacher", "pgn_bwd")


def bench_fit_step(args):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    import fixtures_fit  # noqa: E402  (the replica; imports the modules of fixtures_pgn_unet / _autoencoder)
    from fixtures_autoencoder import Autoencoder  # noqa: E402
    from fixtures_pgn_unet import UNetCustom  # noqa: E402

    if args.batch % 3 or args.size % 32:
        raise SystemExit("fit_step: --batch must be a multiple of 3 and --size of 32")
    torch.manual_seed(0)
    pgn = UNetCustom()
    aes = [Autoencoder(i) for i in range(3)]
    vgg = vgg19_features_avgpool()
    # Paper default clip average (200); the clip does not change the cost.
    rep = fixtures_fit.FitReplica(pgn, aes, lambda x: vgg_taps(vgg, x), lr=1e-3, ae_lr=1e-3, clip_init=200.0)
    steps = WARMUPS + args.reps
    y_all = fixtures_fit.normalise_u8(fixtures_fit.targets_u8("bench", steps, args.batch, args.size))

    rows = []
    for k in range(steps):
        split = dict.fromkeys(PHASES, 0.0)
        last = [0.0]

        def tick(label):
            now = time.perf_counter()
            split[label] += (now - last[0]) * 1e3
            last[0] = now

        t0 = last[0] = time.perf_counter()
        rep.step(y_all[k], tick=tick)
        split["total"] = (time.perf_counter() - t0) * 1e3
        log(f"step {k}{' (warm-up)' if k < WARMUPS else ''}: " + " ".join(f"{n} {v:.1f}" for n, v in split.items()))
        if k >= WARMUPS:
            rows.append(split)

    tag = f"torch_fit_step_{args.batch}x{args.size}"
    emit(f"{tag}_ms", statistics.median(r["total"] for r in rows), "ms")
    for name in ("teacher", "pgn_fwd", "pgn_bwd", "ae"):
        emit(f"{tag}_{name}_ms", statistics.median(r[name] for r in rows), "ms")
    emit(f"{tag}_peak_rss_mb", peak_rss_mb(), "MB")


# ---------------------------------------------------------------------------------------------
# dip_step: one Deep Image Prior step of one arm of issue 9 (the step of torch-anchors.md A, the
# authors' bench_dip.py): zero_grad, gen = normalise(dip(noise)), the arm's loss, backward, Adam
# (lr 0.01). The DIP is tools/fixtures_dip.py's replica (train mode, default init, seed 0), its
# input U[0, 0.1); the target a random [0,1] image, normalised (the cost does not depend on it).
#   mse  mean over C,H,W of (gen - gt)^2 (mse_loss_batchwise)
#   vgg  the perceptual loss P (VGG-19 features[:30], avg pools, as above), target features cached
#   pgn  the UNet PGN replica (tools/fixtures_pgn_unet.py, default init, eval mode, parameters
#        frozen) on gen.detach() and gt, its sigmoid proxy head (kappa 1.1, s 0.048) giving
#        g = 2 (gen - p) / (N s) without a graph; loss = (gen * g).sum(dim=(1, 2, 3))
# The step is timed whole (median and fastest of --reps after 2 warm-ups); afterwards, like the
# anchors, the components alone: loss = the arm's gradient w.r.t. gen (VGG forward + backward to
# its input; PGN forward + head), dip = DIP forward + backward from a fixed gradient + Adam.
# ---------------------------------------------------------------------------------------------

DIP_MEAN, DIP_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIP_KAPPA, DIP_UNET_GRAD_SCALE = 1.1, 0.048


def bench_dip_step(args):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    from fixtures_dip import skip_net  # noqa: E402
    from fixtures_pgn_unet import UNetCustom  # noqa: E402

    torch.manual_seed(0)
    s = args.size
    mean = torch.tensor(DIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DIP_STD).view(1, 3, 1, 1)
    dip = skip_net().train()
    dip_input = torch.rand(1, 3, s, s) * 0.1
    gt = (torch.rand(1, 3, s, s) - mean) / std
    opt = torch.optim.Adam(dip.parameters(), lr=0.01)

    if args.arm == "vgg":
        vgg = vgg19_features_avgpool()
        with torch.no_grad():
            feats = vgg_taps(vgg, gt)

        def loss_fn(gen):
            return sum((f - tf).abs().mean(dim=(1, 2, 3)) for f, tf in zip(vgg_taps(vgg, gen), feats))
    elif args.arm == "pgn":
        pgn = UNetCustom().eval()
        for q in pgn.parameters():
            q.requires_grad_(False)
        n_el = 3 * s * s

        def pgn_grad(gen_d):
            with torch.no_grad():
                p = DIP_KAPPA * (torch.sigmoid(pgn(gen_d, gt)) - mean) / std
                return 2.0 * (gen_d - p) / (n_el * DIP_UNET_GRAD_SCALE)

        def loss_fn(gen):
            return (gen * pgn_grad(gen.detach())).sum(dim=(1, 2, 3))
    else:
        def loss_fn(gen):
            return (gen - gt).pow(2).mean(dim=(1, 2, 3))

    def step():
        opt.zero_grad()
        gen = (dip(dip_input) - mean) / std
        loss = loss_fn(gen)
        loss.backward(torch.ones_like(loss))
        opt.step()

    for _ in range(WARMUPS):
        step()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)

    gen0 = ((dip(dip_input) - mean) / std).detach()

    def loss_alone():
        if args.arm == "pgn":
            return pgn_grad(gen0)
        x = gen0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(x).sum(), x)
        return g

    dgen = loss_alone()

    def dip_alone():
        opt.zero_grad()
        gen = (dip(dip_input) - mean) / std
        gen.backward(dgen)
        opt.step()

    loss_ms = median_ms(loss_alone, args.reps)
    dip_ms = median_ms(dip_alone, args.reps)
    tag = f"torch_dip_{args.arm}_{s}"
    emit(f"{tag}_ms", statistics.median(times), "ms")
    emit(f"{tag}_min_ms", min(times), "ms")
    emit(f"{tag}_loss_ms", loss_ms, "ms")
    emit(f"{tag}_dip_ms", dip_ms, "ms")
    emit(f"{tag}_peak_rss_mb", peak_rss_mb(), "MB")


def bench_rss_baseline(args):
    # What importing torch alone costs, to subtract from the other modes' peak RSS.
    emit("torch_baseline_rss_mb", peak_rss_mb(), "MB")


MODES = {"conv3x3": bench_conv3x3, "vgg_perceptual": bench_vgg_perceptual, "fit_step": bench_fit_step,
         "rss_baseline": bench_rss_baseline}
# Per-mode defaults of --size / --batch.
SIZE_BATCH = {"fit_step": (64, 6)}
MODES["dip_step"] = bench_dip_step
SIZE_BATCH["dip_step"] = (128, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=None, help="vgg_perceptual: image side (256); fit_step: crop side (64)")
    ap.add_argument("--batch", type=int, default=None, help="vgg_perceptual: batch size (1); fit_step: batch (6)")
    ap.add_argument("--arm", choices=("mse", "vgg", "pgn"), default="pgn", help="dip_step: the arm (pgn)")
    args = ap.parse_args()
    size, batch = SIZE_BATCH.get(args.mode, (256, 1))
    args.size = size if args.size is None else args.size
    args.batch = batch if args.batch is None else args.batch
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mode {args.mode}, reps {args.reps}")
    MODES[args.mode](args)


if __name__ == "__main__":
    main()
