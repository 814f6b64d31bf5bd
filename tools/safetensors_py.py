"""Minimal safetensors writer/reader for the fixture generators.

The Python `safetensors` package is not installed here, and the format is simple enough that a
hand-written writer is less trouble than a dependency:

    8 bytes   little-endian u64 N (header length)
    N bytes   JSON {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [b, e]}, ...}
              padded with spaces so the data starts 8-byte aligned
    data      the raw little-endian tensors, back to back, in header order

Output is byte-for-byte deterministic: tensors are stored in the order given (callers pass a
dict built in a fixed order), JSON is written compactly without any run-dependent content.
Accepts numpy arrays or torch tensors (torch is imported lazily, only if a tensor is passed).
"""

import json
import os
import struct

import numpy as np

# numpy dtype -> safetensors dtype name. BF16 has no numpy type; it is handled for torch input.
_NP_TO_ST = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
_ST_TO_NP = {v: k for k, v in _NP_TO_ST.items()}


def _to_bytes(value):
    """Returns (dtype name, shape list, little-endian bytes) for a numpy array or torch tensor."""
    if type(value).__module__.startswith("torch"):
        import torch  # only when the caller already uses torch

        t = value.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            # numpy cannot hold bf16; its bits are the top half of an f32, so ship them as int16.
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
            return "BF16", list(t.shape), raw
        value = t.numpy()
    arr = np.asarray(value)
    if arr.dtype not in _NP_TO_ST:
        raise TypeError(f"unsupported dtype {arr.dtype}")
    name = _NP_TO_ST[arr.dtype]
    # Force little-endian C order whatever the host or the array's strides.
    le = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
    return name, list(arr.shape), le.tobytes()


def encode(tensors, metadata=None):
    """Serialises an ordered mapping name -> array into safetensors bytes."""
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must be str -> str (bad entry {k!r})")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, value in tensors.items():
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved")
        dtype, shape, raw = _to_bytes(value)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    hjson += b" " * (-len(hjson) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs)


def write(path, tensors, metadata=None):
    """Writes atomically (tmp + rename) so an interrupted run never leaves a half fixture."""
    data = encode(tensors, metadata)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def read(path):
    """Returns (dict name -> numpy array, metadata dict). For self-checks; BF16 comes back as int16 bits."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        dt = np.dtype("<i2") if info["dtype"] == "BF16" else _ST_TO_NP[info["dtype"]].newbyteorder("<")
        out[name] = np.frombuffer(data[base + b : base + e], dtype=dt).reshape(info["shape"])
    return out, meta
