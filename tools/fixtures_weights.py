#!/usr/bin/env python3
"""Writes the weights_* fixtures for the C weights reader (tests/unit/test_weights.c).

    OPENBLAS_NUM_THREADS=1 command -p python3 tools/fixtures_weights.py [outdir=tests/fixtures]

tools/make_fixtures.py imports this module and calls write_all(outdir). Files:

  weights_sd_zip.pth       tiny Conv/BatchNorm/Conv state dict (set "sd"), torch.save, zip layout
  weights_sd_legacy.pth    the same, legacy layout (_use_new_zipfile_serialization=False)
  weights_sd_p4.pth        the same, zip with pickle_protocol=4 (FRAME, MEMOIZE, STACK_GLOBAL)
  weights_ckpt_legacy.pth  a PGN v2 checkpoint dict around that state dict, legacy layout
  weights_misc_zip.pth     set "misc": transposed, sliced, offset, expanded and shared-storage
  weights_misc_legacy.pth    tensors and every dtype; zip and legacy layouts
  weights_old_legacy.pth   set "old", pickled by hand: the 4-argument _rebuild_tensor of 2017 files,
                           legacy storage views (view_metadata), _rebuild_parameter, a plain dict
  weights_py.safetensors   set "st": safetensors written by Python, every dtype, with __metadata__
  weights_expected.safetensors  every tensor of every set as float32 under "<set>/<name>";
                           its __metadata__ maps "<set>/<name>" to the dtype the file stores
  weights_bad_*.pth        files broken in one way each (see BAD below)

Everything is deterministic (see canonical_legacy for the legacy layout's storage keys), and every
torch file is read back with torch.load to check it.
"""

import io
import os
import pickle
import pickletools
import struct
import sys
import zipfile
from collections import OrderedDict

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch._utils import _rebuild_parameter, _rebuild_tensor, _rebuild_tensor_v2  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_py  # noqa: E402

ST_DTYPE = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
            torch.uint8: "U8", torch.bool: "BOOL"}
MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


# ---- the tensor sets ----

def make_sd():
    """A state dict shaped like a real one: conv without bias, BatchNorm (int64 num_batches_tracked),
    a parameter-free layer that still uses an index, conv with bias."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Conv2d(4, 2, 1))
    bn = model[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
    return model.state_dict()


def make_misc():
    big = torch.randn(10)
    base = torch.randn(5, 3)
    m = torch.randn(4, 6)
    f16 = torch.tensor([1.5, -2.25, float("inf"), float("-inf"), 6e-8, -0.0, 65504.0, float("nan")]).half()
    return OrderedDict([
        ("tr", base.t()),                             # stride (1, 3)
        ("a", big[0:4]),                              # a and b share one storage;
        ("b", big[4:10]),                             # b starts at offset 4
        ("c", m[1:, 1::2]),                           # offset 7, stride (6, 2)
        ("e", torch.randn(2, 1, 3).expand(2, 4, 3)),  # stride 0
        ("cube", torch.randn(2, 3, 4)),               # 3-element size tuple (TUPLE3)
        ("scalar", torch.tensor(3.5)),                # 0-dim
        ("f64", torch.randn(2, 3, dtype=torch.float64)),
        ("f16", f16.reshape(2, 4)),
        ("bf16", torch.tensor([1.0, -3.140625, 1e30, float("nan")]).bfloat16()),
        ("i32", torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3)),
        ("i16", torch.tensor([-32768, 0, 32767], dtype=torch.int16)),
        ("i8", torch.tensor([-128, 5, 127], dtype=torch.int8)),
        ("u8", torch.tensor([0, 255, 7], dtype=torch.uint8)),
        ("flags", torch.tensor([True, False, True])),
        ("i64", torch.tensor([-(2 ** 40), 2 ** 53 + 1, 3])),
    ])


def make_st():
    st = make_misc()
    for name in ("tr", "a", "b", "c", "e"):
        st[name] = st[name].contiguous()
    st["empty"] = torch.zeros(0, 3)
    return st


def make_checkpoint(sd):
    """Pgn.get_checkpoint() of the PGN code (version 2), around our small state dict."""
    return {
        "state_dict": sd,
        "backbone_type": "resnet",
        "backbone_params": {"down_channels": (64, 128), "up_channels": (64,), "num_blocks": 4, "output_nc": 3},
        "backbone_to_grad_type": "proxy",
        "backbone_to_grad_params": {"type": "sigmoid", "sigmoid": {"scale": 1.1}, "grad_type": "mse",
                                    "grad_scale": 0.025},
        "version": 2,
    }


# ---- hand-made torch pickles (old forms and broken files torch.save cannot produce) ----

class Storage:
    """Pickles as torch's storage persistent id."""

    def __init__(self, cls, key, numel, view=None):
        self.cls, self.key, self.numel, self.view = cls, key, numel, view


class Call:
    """Pickles as fn(*args), the way torch pickles a tensor."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Pickler(pickle.Pickler):
    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        pid = ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return pid + (obj.view,) if self.legacy else pid


def _pickle(obj, legacy):
    buf = io.BytesIO()
    _Pickler(buf, legacy).dump(obj)
    return buf.getvalue()


def write_legacy(path, obj, storages):
    """storages: key -> (numel written in the file, raw bytes)."""
    keys = sorted(storages)
    with open(path, "wb") as f:
        for head in (MAGIC, 1001, SYS_INFO):
            pickle.dump(head, f, protocol=2)
        f.write(_pickle(obj, True))
        pickle.dump(keys, f, protocol=2)
        for k in keys:
            numel, raw = storages[k]
            f.write(struct.pack("<q", numel) + raw)


def write_zip(path, obj, storages, compress=zipfile.ZIP_STORED):
    """storages: key -> raw bytes. Same entry names as torch.save; fixed dates for reproducibility."""
    folder = os.path.splitext(os.path.basename(path))[0]
    entries = [("data.pkl", _pickle(obj, False))] + [(f"data/{k}", raw) for k, raw in storages.items()]
    entries.append(("version", b"3\n"))
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress
            z.writestr(info, data)


def f32_bytes(values):
    return struct.pack(f"<{len(values)}f", *values)


def old_set():
    """(object, storages, expected tensors) for weights_old_legacy.pth."""
    root = [0.5 * i - 2.0 for i in range(12)]
    root_t = torch.tensor(root)
    fs, ls = torch.FloatStorage, torch.LongStorage
    obj = {
        "whole": Call(_rebuild_tensor, Storage(fs, "1000", 12), 0, (3, 4), (4, 1)),
        # a view of root elements [2, 8), read from its element 1 with strides (1, 2)
        "view_t": Call(_rebuild_tensor, Storage(fs, "1000", 12, ("1001", 2, 6)), 1, (2, 2), (1, 2)),
        "view_b": Call(_rebuild_tensor_v2, Storage(fs, "1000", 12, ("1002", 8, 4)), 0, (4,), (1,), False,
                       OrderedDict()),
        "count": Call(_rebuild_tensor, Storage(ls, "2000", 1), 0, (), ()),
        "param": Call(_rebuild_parameter,
                      Call(_rebuild_tensor_v2, Storage(fs, "1000", 12), 6, (2, 3), (3, 1), True, OrderedDict()),
                      True, OrderedDict()),
    }
    storages = {"1000": (12, f32_bytes(root)), "2000": (1, struct.pack("<q", 42))}
    expected = OrderedDict([
        ("whole", root_t.reshape(3, 4)),
        ("view_t", root_t.as_strided((2, 2), (1, 2), 2 + 1)),  # as_strided offsets count from the root
        ("view_b", root_t[8:12]),
        ("count", torch.tensor(42)),
        ("param", root_t[6:12].reshape(2, 3)),
    ])
    return obj, storages, expected


def tensor_v2(storage, size, stride, offset=0):
    """A tensor as torch >= 0.4 pickles it."""
    return Call(_rebuild_tensor_v2, storage, offset, size, stride, False, OrderedDict())


# name -> writer(path). The C test knows what each must complain about.
BAD = {
    # the tensor's last element (index 7) lies past its 6-element storage
    "weights_bad_oob_legacy.pth": lambda p: write_legacy(
        p, {"x": tensor_v2(Storage(torch.FloatStorage, "1", 6), (2, 4), (4, 1))}, {"1": (6, f32_bytes(range(6)))}),
    "weights_bad_oob_zip.pth": lambda p: write_zip(
        p, {"x": tensor_v2(Storage(torch.FloatStorage, "0", 6), (3, 3), (1, 3))}, {"0": f32_bytes(range(6))}),
    # the storage section claims 2^40 elements: far more than the file holds
    "weights_bad_numel_legacy.pth": lambda p: write_legacy(
        p, {"x": tensor_v2(Storage(torch.FloatStorage, "1", 6), (6,), (1,))}, {"1": (1 << 40, f32_bytes(range(6)))}),
    # the persistent id says 100 elements but the zip entry holds 6
    "weights_bad_short_zip.pth": lambda p: write_zip(
        p, {"x": tensor_v2(Storage(torch.FloatStorage, "0", 100), (6,), (1,))}, {"0": f32_bytes(range(6))}),
    # a pickle that would run a shell command if unpickled by Python
    "weights_bad_global_legacy.pth": lambda p: write_legacy(
        p, {"x": Call(os.system, "echo pwned")}, {}),
    # deflated entries: torch never writes them
    "weights_bad_deflate_zip.pth": lambda p: write_zip(
        p, {"x": tensor_v2(Storage(torch.FloatStorage, "0", 6), (6,), (1,))}, {"0": f32_bytes(range(6))},
        zipfile.ZIP_DEFLATED),
}


# ---- legacy files from torch.save: fixed storage keys ----

ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
            "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1}


class _Anything:
    """Stands in for every callable while a pickle is scanned: takes any arguments, items, state."""

    def __init__(self, *args):
        pass

    def __setitem__(self, key, value):
        pass

    def __setstate__(self, state):
        pass


class _StorageScanner(pickle.Unpickler):
    """Lists the storages of a torch object pickle: key -> element size, in order of first use."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.itemsize = {}

    def find_class(self, module, name):
        return name if name in ITEMSIZE else _Anything

    def persistent_load(self, pid):
        self.itemsize.setdefault(pid[2], ITEMSIZE[pid[1]])


def canonical_legacy(path):
    """torch names legacy storages after memory addresses and writes them sorted by name, so the
    file changes from run to run. Renames them 1000000000, 1000000001, ... in order of first use
    and rewrites the key list and the storage section in the new sorted order."""
    with open(path, "rb") as f:
        data = f.read()
    f = io.BytesIO(data)
    starts = []
    for _ in range(5):
        starts.append(f.tell())
        for _ in pickletools.genops(f):
            pass
    pos = f.tell()
    scanner = _StorageScanner(data[starts[3]:starts[4]])
    scanner.load()
    chunks = {}
    for old in pickle.loads(data[starts[4]:pos]):
        (numel,) = struct.unpack_from("<q", data, pos)
        size = 8 + numel * scanner.itemsize[old]
        chunks[old], pos = data[pos:pos + size], pos + size
    assert pos == len(data), path
    rename = {old: str(1000000000 + i) for i, old in enumerate(scanner.itemsize)}
    main = data[starts[3]:starts[4]]
    binunicode = lambda s: b"X" + struct.pack("<I", len(s)) + s.encode()  # noqa: E731
    for old, new in rename.items():  # pickles have no offsets: strings may change length
        main = main.replace(binunicode(old), binunicode(new))
    by_new = {new: chunks[old] for old, new in rename.items()}
    with open(path, "wb") as f:
        f.write(data[:starts[3]] + main + pickle.dumps(sorted(by_new), protocol=2))
        f.write(b"".join(by_new[k] for k in sorted(by_new)))


def check_load(path, want):
    got = torch.load(path)
    if isinstance(want, dict) and "state_dict" in want:
        got, want = got["state_dict"], want["state_dict"]
    assert list(got) == list(want), path
    for k in want:
        g, w = got[k], want[k]
        assert g.dtype == w.dtype and (torch.equal(g, w) or (
            g.is_floating_point() and torch.equal(g.nan_to_num(), w.nan_to_num()))), (path, k)


def write_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    out = lambda name: os.path.join(outdir, name)  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20240611)
        sd, misc, st = make_sd(), make_misc(), make_st()

    torch.save(sd, out("weights_sd_zip.pth"))
    torch.save(sd, out("weights_sd_p4.pth"), pickle_protocol=4)
    torch.save(sd, out("weights_sd_legacy.pth"), _use_new_zipfile_serialization=False)
    ckpt = make_checkpoint(sd)
    torch.save(ckpt, out("weights_ckpt_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(misc, out("weights_misc_zip.pth"))
    torch.save(misc, out("weights_misc_legacy.pth"), _use_new_zipfile_serialization=False)
    for name in ("weights_sd_legacy.pth", "weights_ckpt_legacy.pth", "weights_misc_legacy.pth"):
        canonical_legacy(out(name))
    for name, want in [("weights_sd_zip.pth", sd), ("weights_sd_p4.pth", sd), ("weights_sd_legacy.pth", sd),
                       ("weights_ckpt_legacy.pth", ckpt), ("weights_misc_zip.pth", misc),
                       ("weights_misc_legacy.pth", misc)]:
        check_load(out(name), want)

    obj, storages, old = old_set()
    write_legacy(out("weights_old_legacy.pth"), obj, storages)
    check_load(out("weights_old_legacy.pth"), old)

    safetensors_py.write(out("weights_py.safetensors"), st, {"format": "pt", "note": "caf\u00e9 \"quoted\""})

    expected, dtypes = OrderedDict(), OrderedDict()
    for set_name, tensors in [("sd", sd), ("misc", misc), ("old", old), ("st", st)]:
        for k, t in tensors.items():
            expected[f"{set_name}/{k}"] = t.float().contiguous()
            dtypes[f"{set_name}/{k}"] = ST_DTYPE[t.dtype]
    safetensors_py.write(out("weights_expected.safetensors"), expected, dtypes)

    for name, writer in BAD.items():
        writer(out(name))


if __name__ == "__main__":
    torch.set_num_threads(1)
    write_all(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
