#!/usr/bin/env python3
"""Checks mixtrain's number formats against libraries written elsewhere: numpy's float16 and
ml_dtypes' bfloat16, float8_e4m3fn and float8_e5m2.

Usage: dtype_reference.py DIR, where DIR holds the tables tests/dtype_reference_test.cpp
writes (raw little-endian arrays). Exit 0: all agree; 1: mismatches (listed); 77: numpy or
ml_dtypes missing (the C++ test then skips).

NaN payloads are compared only as "NaN of the same sign": the libraries canonicalise them
differently (ml_dtypes returns 0x7fc0 / 0x7e for every bf16 / e5m2 NaN, numpy keeps a
signalling fp16 payload unquieted), whereas mixtrain keeps the top payload bits and quiets.
Every non-NaN result must match bit for bit.
"""
import os
import sys
import warnings

try:
    import numpy as np
    import ml_dtypes
except ImportError as e:  # pragma: no cover - exercised on machines without them
    print(f"skip: {e}")
    sys.exit(77)

warnings.filterwarnings("ignore", category=RuntimeWarning)  # overflow/invalid in casts

FORMATS = [  # name, library type, unsigned view of the same width
    ("bf16", ml_dtypes.bfloat16, np.uint16),
    ("f16", np.float16, np.uint16),
    ("e4m3", ml_dtypes.float8_e4m3fn, np.uint8),
    ("e5m2", ml_dtypes.float8_e5m2, np.uint8),
]


def compare(label, ours, ref, is_nan_ours, is_nan_ref, sign_ours, sign_ref, inputs):
    bad = (is_nan_ours != is_nan_ref) | (sign_ours != sign_ref) | (~is_nan_ref & (ours != ref))
    n = int(bad.sum())
    if n:
        idx = np.flatnonzero(bad)[:5]
        ex = ", ".join(f"in {inputs[i]:#x}: ours {ours[i]:#x} ref {ref[i]:#x}" for i in idx)
        print(f"FAIL {label}: {n} of {len(ours)} differ; e.g. {ex}")
    else:
        print(f"ok   {label}: {len(ours)} values agree")
    return n


def main():
    d = sys.argv[1]
    x = np.fromfile(os.path.join(d, "in_f32.bin"), dtype=np.float32)
    xbits = x.view(np.uint32)
    fails = 0
    print(f"numpy {np.__version__}, ml_dtypes {ml_dtypes.__version__}")
    for name, T, U in FORMATS:
        bits = 8 * np.dtype(U).itemsize
        # fp32 -> format, every test input.
        ours = np.fromfile(os.path.join(d, f"enc_{name}.bin"), dtype=U)
        ref = x.astype(T).view(U)
        fails += compare(
            f"f32 -> {name}", ours, ref,
            np.isnan(ours.view(T).astype(np.float32)), np.isnan(ref.view(T).astype(np.float32)),
            ours >> (bits - 1), ref >> (bits - 1), xbits)
        # format -> fp32, every bit pattern.
        pats = np.arange(1 << bits, dtype=np.uint64).astype(U)
        dec_ours = np.fromfile(os.path.join(d, f"dec_{name}.bin"), dtype=np.float32)
        dec_ref = pats.view(T).astype(np.float32)
        fails += compare(
            f"{name} -> f32", dec_ours.view(np.uint32), dec_ref.view(np.uint32),
            np.isnan(dec_ours), np.isnan(dec_ref), np.signbit(dec_ours), np.signbit(dec_ref), pats)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
