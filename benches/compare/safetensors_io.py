"""Reading and writing safetensors files with numpy alone, for the comparison scripts in this
folder (they hand data to the library's examples and read their results back).

Only what the scripts need: little-endian f32 tensors, no metadata written, metadata skipped on
reading.
"""
import json
import struct

import numpy as np


def write_safetensors(path, tensors):
    """Writes `tensors`, a list of (name, array) pairs, as f32 tensors in that order."""
    header, offset, blobs = {}, 0, []
    for name, arr in tensors:
        blob = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    """The f32 tensors of the file at `path` as a dict of name -> numpy array (read-only views)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(info["shape"])
    return out
