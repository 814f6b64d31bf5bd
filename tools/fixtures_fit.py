#!/usr/bin/env python3
"""Writes fit.safetensors: 10 steps of online PGN fitting (pgn/fit.h, method.md sections 2.4-2.7,
3.4, 4.1-4.3) by a PyTorch replica, for the C engine's pgn_fit_step to be compared against.

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_fit.py [outdir=tests/fixtures] [--check32]

tools/make_fixtures.py imports this module and calls write_all(outdir) after the other families
(documented in tests/fixtures/README.md, section "fit.safetensors"). --check32 also runs the same
10 steps in float32 and prints the largest relative error of every stored per-step quantity against
the float64 run (how closely a float32 engine can follow; nothing is written for it).

Start state: the committed weight fixtures, read with torch.load from outdir (falling back to
this repository's tests/fixtures when outdir lacks them): pgn_unet_legacy.pth (UNet PGN, the
replica of fixtures_pgn_unet.py), autoencoder{0,1,2}_legacy.pth (max_layer 0, 1, 2, the replica
of fixtures_autoencoder.py) and teacher_vgg19_zip.pth (VGG-19 features[:30] with average pools,
the replica of fixtures_teacher.py). The Adam moments start at zero, both clip averages at CLIP_INIT.

Targets: y_u8 [10, 6, 3, 32, 32] U8, smooth random images (bilinearly upsampled noise at 4x4, 8x8
and 16x16, a linear ramp in a random direction, a per-channel offset and a little pixel noise),
from a generator seeded by CRC-32("fit/y"). Step k uses y_u8[k], normalised as
y = float32((u8 / 255 - mean_c) / std_c) (the division and subtraction in float64, ImageNet
mean/std, then rounded to float32: what a C caller holding float32 images hands pgn_fit_step) and
promoted back to float64 for the computation.

One step, exactly as pgn/fit.h's top comment (B = 6, autoencoder i gets samples 2i, 2i+1):
  1. y_hat_i = A_i(y_i), train mode (batch statistics; the running statistics update too)
  2. o = PGN(concat[y_hat, y]) (y_hat detached, train mode); p = 1.1 (sigmoid(o) - mean) / std;
     g_pred = 2 (y_hat - p) / (N s), N = 3*32*32, s = 0.048
  3. P(x, y) = sum over the 13 ReLU taps of mean_chw |phi(x) - phi(y)|; g_true = dP(y_hat_i, y_i)/dy_hat_i
     (sum over samples, backward to y_hat); P(p, y) and dP(p, y)/dp at p (detached). As the official
     PerceptualLoss, each call recomputes the target's features (same values, twice the work).
  4. max = CLIP_FACTOR * ae_avg (before this step's updates); for i = 0, 1, 2: zero_grad, backward
     of g_pred[slice i] (detached) into A_i's graph, norm_i = clip_grad_norm_(A_i, max), Adam step
     (one Adam per autoencoder). Then ae_avg = 0.99 ae_avg + 0.01 norm_2, three times.
  5. L_i = 2^26 mean_chw (g_pred_i - g_true_i)^2 + 0.2 P(p_i, y_i) + 0.5 mean_chw |p_i - y_i|;
     zero_grad; backward of sum_i L_i into the PGN (through p only; the P term's dP/dp is the one
     computed in 3, handed to autograd as sum(p * 0.2 dP/dp)); norm = clip_grad_norm_(PGN,
     CLIP_FACTOR * pgn_avg); Adam step; pgn_avg = 0.99 pgn_avg + 0.01 norm.
  No autoencoder resets (the plateau rule needs 300,000 samples, the L1 rule an L1 above 1e3).
clip_grad_norm_ (torch 1.13): total = L2 norm of all gradients; coef = max / (total + 1e-6);
gradients are multiplied by min(coef, 1) (always, also when that is 1); returns total.
Adam: torch.optim.Adam(lr 1e-4, betas (0.9, 0.999), eps 1e-8, foreach=False). The fixture's lr is
1e-4, not the paper's 1e-3: with 1e-3 a float32 run (the replica's own, or a C engine's) drifts away
from float64 after step 4 (a ReLU decision near 0 flips, Adam turns the changed gradients into
parameter changes of ~lr), up to 14% by step 8; with 1e-4 the float32 replica stays within 7.5e-4 of
float64 on every quantity over the 10 steps (--check32), so the test can hold all 10 to 1e-3.

Everything is computed in float64 (model.double()), torch on one thread, and rounded to float32
when stored. Stored per step k (all computed from the forward of step k, i.e. from the networks'
state BEFORE step k's updates; averages and norms as described):
  loss, grad_mse, proxy_perceptual, proxy_l1       per-sample means (grad_mse weighted by 2^26, the
                                                   two proxy terms unweighted); loss = grad_mse +
                                                   0.2 proxy_perceptual + 0.5 proxy_l1
  cos, norm_ratio, rel_err                         g_pred vs g_true, per sample flattened, mean over samples
  mse_cos, mse_norm_ratio, mse_rel_err             the same for the MSE direction d = y_hat - y at its
                                                   least-squares scale a = <d, g_true> / <d, d>
  pgn_norm, pgn_avg, pgn_clipped                   pre-clip norm, average after the update, norm > max
  ae_norm [10, 3], ae_avg, ae_clipped [10, 3]
  ae_l1 [10, 3]                                    mean |y_hat_i - y_i| over autoencoder i's slice
plus step 0's y_hat0, o0 (PGN output) and g_true0 [6, 3, 32, 32], to localise a mismatch.
Deterministic and byte-reproducible (checked: sha256 equal over two runs).
"""

import math
import os
import sys
import zlib
from collections import OrderedDict

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS)
import safetensors_py  # noqa: E402
from fixtures_autoencoder import Autoencoder  # noqa: E402
from fixtures_pgn_unet import UNetCustom  # noqa: E402
from fixtures_teacher import Vgg19Avg  # noqa: E402

GENERATOR = "tools/fixtures_fit.py"
REPO_FIXTURES = os.path.join(os.path.dirname(TOOLS), "tests", "fixtures")

SIZE, BATCH, STEPS = 32, 6, 10
AES = 3
LR, AE_LR = 1e-4, 1e-4  # see the docstring (Adam)
W_GRAD, W_PROXY_PERCEPTUAL, W_PROXY_L1 = 2.0 ** 26, 0.2, 0.5
GRAD_SCALE = 0.048  # s, the UNet's
KAPPA = 1.1
CLIP_FACTOR = 5.0
CLIP_INIT = 1000.0  # chosen so that both clips trigger on some steps and not on others (see write_all)
CLIP_EMA_WEIGHT = 0.01
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

WEIGHTS = OrderedDict(pgn="pgn_unet_legacy.pth", ae0="autoencoder0_legacy.pth", ae1="autoencoder1_legacy.pth",
                      ae2="autoencoder2_legacy.pth", teacher="teacher_vgg19_zip.pth")


def gen_for(name):
    g = torch.Generator()
    g.manual_seed(zlib.crc32(("fit/" + name).encode()))
    return g


# ---------------------------------------------------------------------------- targets


def smooth_images(g, n, size):
    """n smooth-ish random RGB images in [0, 1], float64 [n, 3, size, size]: noise at 4x4, 8x8 and
    16x16 upsampled bilinearly, a linear ramp in a random direction, a per-channel offset, a little
    pixel noise; clamped. The draws are float32 (then promoted), so one generator gives one image set."""
    out = torch.zeros(n, 3, size, size, dtype=torch.float64)
    for cells, amp in ((4, 0.30), (8, 0.15), (16, 0.07)):
        noise = torch.randn(n, 3, cells, cells, generator=g, dtype=torch.float32).double()
        out += amp * F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    ang = torch.rand(n, generator=g, dtype=torch.float32).double() * (2 * math.pi)
    amp = 0.2 + 0.3 * torch.rand(n, 3, generator=g, dtype=torch.float32).double()
    off = 0.5 + 0.3 * (torch.rand(n, 3, generator=g, dtype=torch.float32).double() - 0.5)
    t = torch.linspace(-0.5, 0.5, size, dtype=torch.float64)
    ramp = torch.cos(ang)[:, None, None] * t[None, None, :] + torch.sin(ang)[:, None, None] * t[None, :, None]
    out += amp[:, :, None, None] * ramp[:, None] + off[:, :, None, None]
    out += 0.02 * torch.randn(n, 3, size, size, generator=g, dtype=torch.float32).double()
    return out.clamp(0.0, 1.0)


def targets_u8(name, steps, batch, size):
    imgs = smooth_images(gen_for(name), steps * batch, size)
    return torch.round(imgs * 255.0).to(torch.uint8).reshape(steps, batch, 3, size, size)


def normalise_u8(u8):
    """float32((u8 / 255 - mean) / std), the arithmetic in float64."""
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((u8.double() / 255.0 - mean) / std).float()


# ---------------------------------------------------------------------------- the step


def perceptual(taps, x, y):
    """Per-sample P(x, y) [n], with the target's features recomputed on every call (as the official
    PerceptualLoss does) and detached."""
    with torch.no_grad():
        fy = taps(y)
    fx = taps(x)
    return sum((a - b).abs().mean(dim=(1, 2, 3)) for a, b in zip(fx, fy))


def _no_tick(_label):
    pass


class FitReplica:
    """The online PGN fit of pgn/fit.h: PGN, three autoencoders (one Adam each), a teacher given as
    taps(x) -> the 13 ReLU outputs, and the two clip averages. step(y) runs one step and returns its
    statistics. tick(label), when given, is called at the end of each timed phase ("ae", "pgn_fwd",
    "teacher", "pgn_bwd"; "ae" twice: the forwards, then the updates)."""

    def __init__(self, pgn, aes, taps, lr=LR, ae_lr=AE_LR, grad_scale=GRAD_SCALE, clip_factor=CLIP_FACTOR,
                 clip_init=CLIP_INIT, clip_ema_weight=CLIP_EMA_WEIGHT):
        self.pgn, self.aes, self.taps = pgn.train(), [a.train() for a in aes], taps
        # foreach=False: the single-tensor Adam whose arithmetic tests/fixtures/README.md documents.
        self.opt = torch.optim.Adam(pgn.parameters(), lr=lr, foreach=False)
        self.ae_opts = [torch.optim.Adam(a.parameters(), lr=ae_lr, foreach=False) for a in self.aes]
        self.grad_scale, self.clip_factor, self.ema = grad_scale, clip_factor, clip_ema_weight
        self.pgn_avg = self.ae_avg = float(clip_init)

    def step(self, y, tick=_no_tick, keep=False):
        dt = y.dtype
        b = y.shape[0]
        per = b // len(self.aes)
        n_el = y[0].numel()
        mean = torch.tensor(MEAN, dtype=dt).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=dt).view(1, 3, 1, 1)
        st = OrderedDict()

        # 1. autoencoders (graphs kept for their update)
        yhat_g = [a(y[i * per:(i + 1) * per]) for i, a in enumerate(self.aes)]
        y_hat = torch.cat([t.detach() for t in yhat_g])
        tick("ae")

        # 2. PGN forward and head (y_hat detached)
        o = self.pgn(y_hat, y)
        p = KAPPA * (torch.sigmoid(o) - mean) / std
        g_pred = 2.0 * (y_hat - p) / (n_el * self.grad_scale)
        tick("pgn_fwd")

        # 3. teacher: g_true = dP(y_hat, y)/dy_hat, and P(p, y) with dP(p, y)/dp (both constants here;
        #    the latter enters the PGN backward in step 5, as pgn/teacher.h hands it to the head)
        x = y_hat.clone().requires_grad_(True)
        (g_true,) = torch.autograd.grad(perceptual(self.taps, x, y).sum(), x)
        pl = p.detach().requires_grad_(True)
        prc = perceptual(self.taps, pl, y)
        (dprc_dp,) = torch.autograd.grad(prc.sum(), pl)
        prc = prc.detach()
        tick("teacher")

        # 4. autoencoders, with the predicted gradient; the clip bound is the average before this step
        ae_max = self.clip_factor * self.ae_avg
        ae_norm = []
        for i, (a, opt) in enumerate(zip(self.aes, self.ae_opts)):
            opt.zero_grad()
            yhat_g[i].backward(g_pred[i * per:(i + 1) * per].detach())
            ae_norm.append(torch.nn.utils.clip_grad_norm_(a.parameters(), ae_max).item())
            opt.step()
        for _ in self.aes:  # the official quirk: one shared average, updated with the last norm
            self.ae_avg = (1.0 - self.ema) * self.ae_avg + self.ema * ae_norm[-1]
        tick("ae")

        # 5. PGN loss (per sample, summed), backward, clip, Adam, average. The perceptual term's
        #    gradient is dP/dp from step 3: sum(p * w dP/dp) has exactly that gradient w.r.t. p.
        grad_mse = W_GRAD * (g_pred - g_true).pow(2).mean(dim=(1, 2, 3))
        l1 = (p - y).abs().mean(dim=(1, 2, 3))
        loss = grad_mse.detach() + W_PROXY_PERCEPTUAL * prc + W_PROXY_L1 * l1.detach()
        self.opt.zero_grad()
        (grad_mse.sum() + W_PROXY_L1 * l1.sum() + (p * (W_PROXY_PERCEPTUAL * dprc_dp)).sum()).backward()
        pgn_max = self.clip_factor * self.pgn_avg
        pgn_norm = torch.nn.utils.clip_grad_norm_(self.pgn.parameters(), pgn_max).item()
        self.opt.step()
        self.pgn_avg = (1.0 - self.ema) * self.pgn_avg + self.ema * pgn_norm
        tick("pgn_bwd")

        with torch.no_grad():
            gp, gt = g_pred.detach().flatten(1), g_true.flatten(1)
            ngt = gt.norm(dim=1)
            d = (y_hat - y).flatten(1)
            a_ls = (d * gt).sum(1) / (d * d).sum(1)
            gm = a_ls[:, None] * d
            st["loss"] = loss.mean().item()
            st["grad_mse"] = grad_mse.detach().mean().item()
            st["proxy_perceptual"] = prc.detach().mean().item()
            st["proxy_l1"] = l1.detach().mean().item()
            st["cos"] = ((gp * gt).sum(1) / (gp.norm(dim=1) * ngt)).mean().item()
            st["norm_ratio"] = (gp.norm(dim=1) / ngt).mean().item()
            st["rel_err"] = ((gp - gt).norm(dim=1) / ngt).mean().item()
            st["mse_cos"] = ((gm * gt).sum(1) / (gm.norm(dim=1) * ngt)).mean().item()
            st["mse_norm_ratio"] = (gm.norm(dim=1) / ngt).mean().item()
            st["mse_rel_err"] = ((gm - gt).norm(dim=1) / ngt).mean().item()
            st["pgn_norm"], st["pgn_avg"], st["pgn_clipped"] = pgn_norm, self.pgn_avg, pgn_norm > pgn_max
            st["pgn_max"] = pgn_max
            st["ae_norm"], st["ae_avg"] = ae_norm, self.ae_avg
            st["ae_clipped"] = [v > ae_max for v in ae_norm]
            st["ae_max"] = ae_max
            st["ae_l1"] = [(y_hat[i * per:(i + 1) * per] - y[i * per:(i + 1) * per]).abs().mean().item()
                           for i in range(len(self.aes))]
        if keep:
            st["y_hat"], st["o"], st["g_true"] = y_hat, o.detach(), g_true
        return st


# ---------------------------------------------------------------------------- the fixture


def weights_dir(outdir):
    if all(os.path.exists(os.path.join(outdir, f)) for f in WEIGHTS.values()):
        return outdir
    return REPO_FIXTURES


def load_replica(wdir, dtype, clip_init=CLIP_INIT):
    pgn = UNetCustom()
    pgn.load_state_dict(torch.load(os.path.join(wdir, WEIGHTS["pgn"])), strict=True)
    aes = []
    for i in range(AES):
        a = Autoencoder(i)
        a.load_state_dict(torch.load(os.path.join(wdir, WEIGHTS["ae%d" % i])), strict=True)
        aes.append(a.to(dtype))
    teacher = Vgg19Avg()
    teacher.load_state_dict(torch.load(os.path.join(wdir, WEIGHTS["teacher"])), strict=True)
    teacher.to(dtype).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    return FitReplica(pgn.to(dtype), aes, teacher.taps, clip_init=clip_init)


SCALARS = ["loss", "grad_mse", "proxy_perceptual", "proxy_l1", "cos", "norm_ratio", "rel_err", "mse_cos",
           "mse_norm_ratio", "mse_rel_err", "pgn_norm", "pgn_avg", "ae_avg"]
PER_AE = ["ae_norm", "ae_l1"]


def run(wdir, y_u8, dtype, clip_init=CLIP_INIT, log=None):
    rep = load_replica(wdir, dtype, clip_init)
    stats, first = [], None
    for k in range(y_u8.shape[0]):
        st = rep.step(normalise_u8(y_u8[k]).to(dtype), keep=(k == 0))
        if k == 0:
            first = (st.pop("y_hat"), st.pop("o"), st.pop("g_true"))
        stats.append(st)
        if log:
            log(k, st)
    return stats, first


def print_step(k, st):
    print("step %d: loss %.6g (grad %.6g prc %.6g l1 %.6g) cos %.4f ratio %.4f rel %.4f | pgn norm %.6g max %.6g%s "
          "| ae norms %s max %.6g%s | ae_l1 %s"
          % (k, st["loss"], st["grad_mse"], st["proxy_perceptual"], st["proxy_l1"], st["cos"], st["norm_ratio"],
             st["rel_err"], st["pgn_norm"], st["pgn_max"], " CLIP" if st["pgn_clipped"] else "",
             " ".join("%.4g" % v for v in st["ae_norm"]), st["ae_max"],
             " CLIP" + "".join(str(int(c)) for c in st["ae_clipped"]) if any(st["ae_clipped"]) else "",
             " ".join("%.4g" % v for v in st["ae_l1"])), flush=True)


def write_all(outdir, verbose=False):
    os.makedirs(outdir, exist_ok=True)
    wdir = weights_dir(outdir)
    y_u8 = targets_u8("y", STEPS, BATCH, SIZE)
    stats, (y_hat0, o0, g_true0) = run(wdir, y_u8, torch.float64, log=print_step if verbose else None)

    # The clip decisions must not sit on a rounding edge, or a float32 engine could decide otherwise.
    for st in stats:
        assert abs(st["pgn_norm"] / st["pgn_max"] - 1) > 0.02, st
        for v in st["ae_norm"]:
            assert abs(v / st["ae_max"] - 1) > 0.02, st
    # CLIP_INIT is chosen so that each clip triggers on some steps and not on others.
    pgn_c = [st["pgn_clipped"] for st in stats]
    ae_c = [c for st in stats for c in st["ae_clipped"]]
    assert any(pgn_c) and not all(pgn_c), pgn_c
    assert any(ae_c) and not all(ae_c), ae_c

    t = OrderedDict()
    t["y_u8"] = y_u8
    for name in SCALARS:
        t[name] = torch.tensor([st[name] for st in stats], dtype=torch.float64).float()
    for name in PER_AE:
        t[name] = torch.tensor([st[name] for st in stats], dtype=torch.float64).float()
    t["pgn_clipped"] = torch.tensor([st["pgn_clipped"] for st in stats], dtype=torch.uint8)
    t["ae_clipped"] = torch.tensor([st["ae_clipped"] for st in stats], dtype=torch.uint8)
    t["y_hat0"], t["o0"], t["g_true0"] = y_hat0.float(), o0.float(), g_true0.float()
    meta = OrderedDict(
        generator=GENERATOR, torch_version=torch.__version__, compute_dtype="float64",
        size=str(SIZE), batch=str(BATCH), steps=str(STEPS), lr=repr(LR), ae_lr=repr(AE_LR),
        w_grad=repr(W_GRAD), w_proxy_perceptual=repr(W_PROXY_PERCEPTUAL), w_proxy_l1=repr(W_PROXY_L1),
        grad_scale=repr(GRAD_SCALE), kappa=repr(KAPPA), clip_factor=repr(CLIP_FACTOR), clip_init=repr(CLIP_INIT),
        clip_ema_weight=repr(CLIP_EMA_WEIGHT), arch="unet", proxy="sigmoid",
        pgn_weights=WEIGHTS["pgn"], ae_weights=",".join(WEIGHTS["ae%d" % i] for i in range(AES)),
        teacher_weights=WEIGHTS["teacher"],
        y="y_u8[k] is step k's batch; y = float32((u8/255 - mean)/std) computed in float64, ImageNet mean/std",
        adam="torch.optim.Adam(lr, betas=(0.9,0.999), eps=1e-8, foreach=False); one per autoencoder",
        clip="clip_grad_norm_: coef = max/(total+1e-6), grads *= min(coef,1); returns total (pre-clip)",
        stats="per step, from that step's forward; loss terms per-sample means (grad_mse weighted, proxy terms "
              "unweighted); averages after that step's updates")
    path = os.path.join(outdir, "fit.safetensors")
    size = safetensors_py.write(path, t, meta)
    return stats, size


def check32(outdir):
    """The float32 replica against the float64 one, same start and targets: largest relative error per
    quantity over the 10 steps (and the step where it occurs)."""
    wdir = weights_dir(outdir)
    y_u8 = targets_u8("y", STEPS, BATCH, SIZE)
    s64, f64 = run(wdir, y_u8, torch.float64)
    s32, f32 = run(wdir, y_u8, torch.float32)
    print("float32 vs float64 (max over steps of |a32 - a64| / |a64|):")
    worst = OrderedDict()
    for name in SCALARS + PER_AE:
        errs = []
        for k, (a, b) in enumerate(zip(s32, s64)):
            av, bv = a[name], b[name]
            av, bv = (av, bv) if isinstance(av, list) else ([av], [bv])
            errs.append((max(abs(x - y) / abs(y) for x, y in zip(av, bv)), k))
        e, k = max(errs)
        worst[name] = e
        print("  %-18s %.3e (step %d); per step: %s" % (name, e, k, " ".join("%.1e" % v for v, _ in errs)))
    for name, a, b in zip(("y_hat0", "o0", "g_true0"), f32, f64):
        rel = ((a.double() - b).abs().max() / b.abs().max()).item()
        print("  %-18s max |a32 - a64| / max |a64| = %.3e" % (name, rel))
    flips = [(k, a["pgn_clipped"], b["pgn_clipped"]) for k, (a, b) in enumerate(zip(s32, s64))
             if a["pgn_clipped"] != b["pgn_clipped"] or a["ae_clipped"] != b["ae_clipped"]]
    print("  clip decisions that differ: %s" % (flips or "none"))
    return worst


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    outdir = args[0] if args else "tests/fixtures"
    torch.set_num_threads(1)
    stats, size = write_all(outdir, verbose=True)
    print("wrote %s: %d bytes" % (os.path.join(outdir, "fit.safetensors"), size))
    if "--check32" in sys.argv:
        check32(outdir)
