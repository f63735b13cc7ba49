"""Writes the committed seed corpus of fuzz_io.py (tests/fuzz/corpus/io/): one valid input of
every wire, key and role, at the sizes the rules turn on, with and without each control
message and with GRO segment trains. Run it again only to change the seeds:

    python tests/fuzz/seeds.py
"""

import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "..")]

from packet_flow import wire  # noqa: E402

KEY = b"fuzz-key"                       # fuzz_io.KEY
NATIVE, STAMP, STAMP_REFLECTED = 0, 1, 2
KEYED, REFLECTOR, V6, STAMPED, TTL, GRO = 4, 8, 16, 32, 64, 128


def head(conf, seg=0, ttl=64):
    return struct.pack("<BHB", conf, seg, ttl)


def seeds():
    t = 1_764_633_600_000_000_000
    out = []
    for keyed in (0, KEYED):
        key = KEY if keyed else None
        for size in (32, 48, 55, 56, 71, 72, 200):
            pkt = wire.encode_native(0x1122334455667788, 7, t, size=size, key=key)
            for role in (0, REFLECTOR):
                out.append(head(NATIVE | keyed | role | STAMPED | TTL) + pkt)
        out.append(head(NATIVE | keyed | REFLECTOR | V6 | TTL, ttl=3) +
                   wire.encode_native(5, 6, t, flags=wire.FLAG_FINAL, size=80, key=key))
        out.append(head(NATIVE | keyed) +
                   wire.encode_native(5, 6, t, size=64, key=key, reflect=(1, t + 5, t + 9)))
        train = b"".join(wire.encode_native(9, s, t + s, size=72, key=key) for s in range(3))
        out.append(head(NATIVE | keyed | GRO | STAMPED, seg=72) + train + train[:40])
        out.append(head(STAMP | keyed | REFLECTOR | TTL, ttl=250) + wire.encode_stamp(3, t, 77))
        out.append(head(STAMP | keyed | STAMPED) + wire.encode_stamp(4, t, 78, size=60))
        sender = wire.encode_stamp(4, t, 79)
        out.append(head(STAMP_REFLECTED | keyed | TTL | GRO, seg=44) + 2 *
                   wire.encode_stamp_reflection(2, t + 9, t + 5, sender, 61, ssid=79))
    out.append(head(NATIVE) + wire.encode_legacy(12, t // 1000))
    out.append(head(NATIVE | REFLECTOR) + wire.encode_legacy(13, t // 1000, final=True))
    out.append(head(NATIVE | GRO, seg=17) + 3 * wire.encode_legacy(14, t // 1000))
    out.append(head(NATIVE | REFLECTOR) + b"PF\x02\x00" + bytes(60))
    out.append(head(NATIVE) + b"")
    return out


def main():
    folder = os.path.join(HERE, "corpus", "io")
    os.makedirs(folder, exist_ok=True)
    for data in seeds():
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds())} seeds in {folder}")


if __name__ == "__main__":
    main()
