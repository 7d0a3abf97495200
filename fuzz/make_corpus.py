#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/: small valid files and a few
malformed ones. Deterministic (gzip mtime 0), so rerunning it changes nothing.
Run with /usr/bin/python3 (needs numpy and safetensors)."""
import gzip
import json
import os
import struct
import zlib

import numpy as np
from safetensors.numpy import save

ROOT = os.path.dirname(os.path.abspath(__file__))


def writer(target):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)

    def w(name, data):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

    return w


def safetensors_seeds():
    w = writer("safetensors")

    def st(header, data=b""):
        h = json.dumps(header, separators=(",", ":")).encode()
        return struct.pack("<Q", len(h)) + h + data

    # Valid, written by the reference implementation.
    w("ref_two_tensors.safetensors",
      save({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.array([1, 2], dtype=np.int64)}, metadata={"k": "v"}))
    w("ref_dtypes.safetensors",
      save({"a": np.zeros((2, 2), dtype=np.float16), "u": np.arange(3, dtype=np.uint8),
            "i": np.array([7], dtype=np.int32), "d": np.array([1.5])}))
    # Valid, mixtrain style: a CRC32 per tensor, bf16, a zero-element tensor and a scalar.
    x = struct.pack("<4H", 0x3F80, 0x4000, 0x4040, 0xBF80)
    s = struct.pack("<f", 2.5)
    hdr = {
        "__metadata__": {"mixtrain.crc32.x": "%08x" % zlib.crc32(x),
                         "mixtrain.crc32.s": "%08x" % zlib.crc32(s),
                         "mixtrain.crc32.e": "%08x" % zlib.crc32(b""), "note": "seed"},
        "x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
        "e": {"dtype": "F8_E4M3", "shape": [0, 5], "data_offsets": [8, 8]},
        "s": {"dtype": "F32", "shape": [], "data_offsets": [8, 12]},
    }
    good = st(hdr, x + s)
    w("crc_bf16_scalar_empty.safetensors", good)
    w("empty_header.safetensors", st({}))
    # Malformed.
    w("bad_truncated.safetensors", good[:-3])
    w("bad_crc.safetensors", good[:-1] + b"\x00")
    w("bad_overlap.safetensors",
      st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
          "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"abcd"))
    w("bad_json.safetensors", struct.pack("<Q", 10) + b'{"a":[1,2')
    w("bad_header_len.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
    w("bad_shape_overflow.safetensors",
      st({"a": {"dtype": "F64", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 0]}}))
    # Regression: no bytes, but strides of 2^124 (reached signed overflow in Tensor::empty).
    w("bad_zero_extent_huge_strides.safetensors",
      st({"a": {"dtype": "F32", "shape": [0, 1 << 62, 1 << 62], "data_offsets": [0, 0]}}))
    dup = b'{"a":{},"a":{}}'
    w("bad_dup_key.safetensors", struct.pack("<Q", len(dup)) + dup)
    w("short.safetensors", b"\x02\x00\x00")


def idx_seeds():
    w = writer("idx")

    def idx(magic, dims, n):
        return (struct.pack(">I", magic) + b"".join(struct.pack(">I", v) for v in dims) +
                bytes(i % 251 for i in range(n)))

    gz = lambda b: gzip.compress(b, mtime=0)
    w("images_2x3x4.idx", idx(0x803, [2, 3, 4], 24))
    w("images_2x3x4.idx.gz", gz(idx(0x803, [2, 3, 4], 24)))
    w("labels_5.idx", idx(0x801, [5], 5))
    w("labels_5.idx.gz", gz(idx(0x801, [5], 5)))
    w("bad_magic.idx", idx(0xD03, [1, 2, 2], 16))
    w("bad_truncated.idx.gz", gz(idx(0x803, [2, 28, 28], 100)))
    w("bad_trailing.idx", idx(0x801, [3], 4))
    w("bad_liar.idx", idx(0x803, [1000000, 28, 28], 10))
    w("bad_gzip_cut.idx.gz", gz(idx(0x803, [4, 8, 8], 256))[:-10])


def text_seeds():
    # The text target takes its parameters from the end of the input (FuzzedDataProvider) and
    # the text from the front, so plain text makes a fine seed.
    w = writer("text")
    with open(os.path.join(ROOT, "..", "tests", "data", "jargon_sample.txt"), "rb") as f:
        src = f.read()
    w("jargon_1k.txt", src[:1024])
    w("jargon_200.txt", src[5000:5200])
    w("params_tail.bin", b"hello, world\n" + bytes([3, 7, 40, 0, 0, 0, 0, 0, 0, 0, 1] + [0] * 15))
    w("all_bytes.bin", bytes(range(256)))
    w("one_byte.txt", b"x")


def cli_args_seeds():
    # NUL-separated argument lists (argv[0] is added by the target): each subcommand, the
    # flag kinds (numbers, lists, member checks, hidden testing aids) and a few wrong ones.
    w = writer("cli_args")
    seeds = {
        "train_gpt": ["train", "--model", "gpt", "--data", "text:x.txt", "--steps", "5",
                      "--layers", "1", "--width", "32", "--heads", "2", "--context", "16"],
        "train_mlp": ["train", "--hidden", "512,256", "--batch", "64", "--precision", "bf16",
                      "--master", "split16", "--optimizer", "sgd", "--momentum", "0.9"],
        "train_fp16": ["train", "--precision", "fp16", "--loss-scale", "static:1024",
                       "--scale-init", "65536", "--scale-growth-interval", "100"],
        "train_policy": ["train", "--precision", "p=f32,c=bf16,o=f32", "--grad-dtype", "compute"],
        "train_resume": ["train", "--resume", "runs/a", "--out", "runs/b", "--force"],
        "train_aids": ["train", "--inject-nonfinite-grad", "1,2,3", "--init-scale", "1e4",
                       "--stop-after", "3"],
        "train_bad_numbers": ["train", "--lr", "-1", "--batch", "0", "--dropout", "1.5",
                              "--steps", "9223372036854775807"],
        "compare": ["compare", "--precisions", "fp32,bf16,fp16:none", "--steps", "2"],
        "doctor": ["doctor", "--doctor-steps", "0", "--model", "gpt"],
        "export": ["export", "runs/a", "--dtype", "bf16", "--out", "w.safetensors"],
        "bench": ["bench", "gemm", "--sizes", "64,128", "--dtypes", "fp32"],
        "help": ["train", "--help"],
        "unknown": ["train", "--no-such-flag", "--steps"],
    }
    for name, args in seeds.items():
        w(name, b"\0".join(a.encode() for a in args))


if __name__ == "__main__":
    safetensors_seeds()
    idx_seeds()
    text_seeds()
    cli_args_seeds()
