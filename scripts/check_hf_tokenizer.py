#!/usr/bin/env python3
"""Checks that the Hugging Face `tokenizers` library loads a seqmix dataset's tokenizer.json and gives the
same ids as seqmix.

    python3 scripts/check_hf_tokenizer.py DATASET_DIR SAMPLE.txt [--seqmix PATH]

1. The sample: `seqmix prepare SAMPLE --tokenizer-file DATASET_DIR/tokenizer.json` encodes the sample with
   seqmix's own encoder into a temporary dataset; its manifest gives the bytes of each split, so the sample is
   cut the same way and each part is encoded by `tokenizers`; the ids must equal the shards' ids.
2. The dataset itself: the first --max-tokens ids of its val split are decoded by `tokenizers` and encoded again;
   the ids must come back unchanged.

The sample must be valid UTF-8 (the library takes str) and should not contain the literal "<|endoftext|>",
which `tokenizers` matches as the special token while seqmix encodes text literally. Exit code 0 when all
ids agree, 1 otherwise.
"""
import argparse
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from array import array

HEADER = 64
MAGIC = b"SQMXTOKS"


def read_shard(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER or data[:8] != MAGIC:
        sys.exit(f"{path}: not a seqmix token shard")
    version, token_bytes, count = struct.unpack_from("<IIQ", data, 8)
    if token_bytes not in (2, 4) or len(data) != HEADER + count * token_bytes:
        sys.exit(f"{path}: bad header or truncated file")
    ids = array("H" if token_bytes == 2 else "I")
    ids.frombytes(data[HEADER:])
    if sys.byteorder != "little":
        ids.byteswap()
    return ids.tolist()


def split_ids(ds, name, manifest):
    out = []
    for sh in manifest["splits"][name]["shards"]:
        out.extend(read_shard(os.path.join(ds, sh["file"])))
    return out


def find_seqmix(explicit):
    if explicit:
        return explicit
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pats = ["build*/seqmix", "build*/bin/seqmix", "build*/*/seqmix"]
    for p in pats:
        for c in sorted(glob.glob(os.path.join(root, p))):
            if os.path.isfile(c) and os.access(c, os.X_OK):
                return c
    found = shutil.which("seqmix")
    if found:
        return found
    sys.exit("cannot find the seqmix binary; build it (make) or pass --seqmix PATH")


def first_mismatch(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a dataset directory made by `seqmix prepare`")
    ap.add_argument("sample", help="a UTF-8 text file to encode with both")
    ap.add_argument("--seqmix", help="path of the seqmix binary (default: build*/seqmix, then PATH)")
    ap.add_argument("--max-tokens", type=int, default=200000, help="val ids to round-trip (default 200000)")
    args = ap.parse_args()

    try:
        from tokenizers import Tokenizer
        import tokenizers
    except ImportError:
        sys.exit("the `tokenizers` Python package is needed: pip install tokenizers")

    tok_path = os.path.join(args.dataset, "tokenizer.json")
    with open(os.path.join(args.dataset, "manifest.json")) as f:
        manifest = json.load(f)
    hf = Tokenizer.from_file(tok_path)
    kind = manifest["tokenizer"]["kind"]
    print(f"tokenizers {tokenizers.__version__}: loaded {tok_path} ({kind}, "
          f"vocab {hf.get_vocab_size(with_added_tokens=True)}; seqmix says {manifest['tokenizer']['vocab_size']})")
    ok = hf.get_vocab_size(with_added_tokens=True) == manifest["tokenizer"]["vocab_size"]
    if not ok:
        print("MISMATCH: vocabulary sizes differ")

    with open(args.sample, "rb") as f:
        sample = f.read()
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        sys.exit(f"{args.sample} is not valid UTF-8 ({e}); the tokenizers library only takes valid text")
    if b"<|endoftext|>" in sample:
        print("warning: the sample contains the literal <|endoftext|>; expect a mismatch there")

    # 1. The sample, through seqmix's encoder and through tokenizers.
    seqmix = find_seqmix(args.seqmix)
    tmp = tempfile.mkdtemp(prefix="seqmix_hfcheck_")
    try:
        out = os.path.join(tmp, "ds")
        cmd = [seqmix, "prepare", args.sample, "--tokenizer-file", tok_path, "--out", out, "--quiet"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
        with open(os.path.join(out, "manifest.json")) as f:
            m = json.load(f)
        off = 0
        total = 0
        for name in ("train", "val", "test"):
            nbytes = m["splits"][name]["bytes"]
            part = sample[off:off + nbytes].decode("utf-8")
            off += nbytes
            ours = split_ids(out, name, m)
            theirs = hf.encode(part, add_special_tokens=False).ids
            total += len(ours)
            if ours != theirs:
                ok = False
                i = first_mismatch(ours, theirs)
                print(f"MISMATCH in sample part {name} at id {i}: seqmix {ours[i:i + 8]} tokenizers {theirs[i:i + 8]}")
                print(f"  tokenizers tokens there: {hf.encode(part, add_special_tokens=False).tokens[i:i + 8]}")
            else:
                print(f"sample part {name}: {len(ours)} ids identical")
        if off != len(sample):
            print(f"note: the sample has {len(sample)} bytes, the splits cover {off}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # 2. The dataset's own val ids: decode and encode again with tokenizers.
    ids = split_ids(args.dataset, "val", manifest)[: args.max_tokens]
    # (word: <unk> decodes to "<unk>", which encodes to the unknown id again)
    text = hf.decode(ids, skip_special_tokens=False)
    again = hf.encode(text, add_special_tokens=False).ids
    # A cut at max_tokens may split a token's bytes or a word; compare all but the last few ids.
    keep = len(ids) if len(ids) < args.max_tokens else len(ids) - 16
    if again[:keep] != ids[:keep]:
        ok = False
        i = first_mismatch(again, ids)
        print(f"MISMATCH: val ids do not survive tokenizers decode+encode at {i}: {ids[i:i + 8]} -> {again[i:i + 8]}")
    else:
        print(f"val round trip through tokenizers: {keep} ids identical")

    print("OK: tokenizers gives the same ids as seqmix" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
