#!/usr/bin/env python3
"""Verify an oknek evidence journal without oknek.

An independent implementation of docs/evidence.md ("Verifying without oknek"), written only from
that document. Needs Python 3.9+ and the `cryptography` package.

    python3 oknek_verify.py PUBKEY JOURNAL...

PUBKEY is `oknek-ed25519:<base64>` (the output of `oknek key show --public`) or a file holding it;
JOURNAL is one or more journal files or directories. Exits 0 when every record verifies, 1 at
the first bad record (printing its seq and what is wrong), 2 on usage errors.
"""

import base64
import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

BUNDLE_TAG = b"oknek-bundle-v1\x00"
HEAD_TAG = b"oknek-head-v1\x00"
GENESIS = "0" * 64


def canonical(value):
    # Sorted keys (code point order = UTF-8 byte order), no whitespace, raw UTF-8, minimal escapes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_key(arg):
    text = arg
    if not arg.startswith("oknek-ed25519:") and os.path.exists(arg):
        with open(arg, encoding="utf-8") as f:
            text = next(
                (l.split(" ", 1)[-1] for l in f if "oknek-ed25519:" in l), ""
            )
    text = text.strip()
    if not text.startswith("oknek-ed25519:"):
        sys.exit("usage: the public key must look like oknek-ed25519:<base64>")
    raw = base64.b64decode(text[len("oknek-ed25519:"):], validate=True)
    return Ed25519PublicKey.from_public_bytes(raw)


def journal_files(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            names = sorted(
                n for n in os.listdir(p) if n.startswith("evidence-") and n.endswith(".jsonl")
            )
            out += [os.path.join(p, n) for n in names]
        else:
            out.append(p)
    return out


class Bad(Exception):
    pass


def verify(key, files):
    last_seq, last_hash, count = None, None, 0
    for path in files:
        with open(path, encoding="utf-8", newline="\n") as f:
            for lineno, line in enumerate(f, 1):
                where = f"{path}:{lineno}"
                if not line.endswith("\n"):
                    print(f"warning: {where}: partial last line (interrupted write)")
                    continue
                rec = json.loads(line)
                if "head" in rec:
                    h = rec["head"]
                    msg = HEAD_TAG + h["seq"].to_bytes(8, "big") + bytes.fromhex(h["hash"])
                    try:
                        key.verify(bytes.fromhex(h["sig"]), msg)
                    except InvalidSignature:
                        raise Bad(f"{where}: signed head for seq {h['seq']} does not verify")
                    if (h["seq"], h["hash"]) != (last_seq, last_hash):
                        raise Bad(f"{where}: signed head names seq {h['seq']}, records end at {last_seq}")
                    continue
                body = rec["bundle"]
                seq = body["seq"]
                digest = hashlib.sha256(BUNDLE_TAG + canonical(body)).digest()
                if digest.hex() != rec["hash"]:
                    raise Bad(f"seq {seq} ({where}): edited: contents do not match the hash")
                try:
                    key.verify(bytes.fromhex(rec["sig"]), digest)
                except InvalidSignature:
                    raise Bad(f"seq {seq} ({where}): signature does not verify (key id {body['key']})")
                if last_seq is None:
                    if seq == 1 and body["prev"] != GENESIS:
                        raise Bad(f"seq 1 ({where}): prev is not 64 zeros")
                else:
                    if seq != last_seq + 1:
                        raise Bad(f"seq {seq} ({where}): expected seq {last_seq + 1}")
                    if body["prev"] != last_hash:
                        raise Bad(f"seq {seq} ({where}): prev does not match the hash of seq {last_seq}")
                last_seq, last_hash = seq, rec["hash"]
                count += 1
    return count, last_seq


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    key = load_key(argv[1])
    try:
        count, last = verify(key, journal_files(argv[2:]))
    except Bad as e:
        print(f"FAILED: {e}")
        return 1
    print(f"ok: {count} bundles, last seq {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
