#!/usr/bin/env python3
"""Synthetic call-arm captures for checking what nDPI makes of a framing, without the agent.

Writes one pcap per case into OUTDIR (default /tmp/callwatch-ndpi-synth): a 127.0.0.1 client on
an ephemeral port talking to 127.0.0.1:PORT, N packets each way at 20 ms, shaped the way
FINDINGS.md describes ("current" = what proto/src/framing.rs sends today, "proposed" = the
changes FINDINGS.md recommends). Payloads that a real platform encrypts are random bytes.

    python3 tests/ndpi/synth_pcap.py [OUTDIR] [--seed=N] [--sweep]
    for f in OUTDIR/*.pcap; do ndpiReader -i "$f" -v 2; done

Only the standard library; Ethernet framing like a `tcpdump -i lo` capture. Every case gets its
own file: nDPI's STUN LRU cache is keyed on address+port, so two 3478 flows in one file would
inherit each other's sub-classification.
"""

import os
import random
import struct
import sys
import zlib

MAGIC = 0x2112A442


def pcap_writer(path):
    f = open(path, "wb")
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # DLT_EN10MB
    return f


def ip_udp(src_port, dst_port, payload):
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", src_port, dst_port, udp_len, 0) + payload
    total = 20 + udp_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                      bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    csum = 0
    for i in range(0, 20, 2):
        csum += (hdr[i] << 8) | hdr[i + 1]
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~csum & 0xFFFF) + hdr[12:]
    return b"\x00" * 12 + b"\x08\x00" + hdr + udp


def write_flow(path, server_port, client_port, packets, t0=1_700_000_000.0):
    """packets: list of (from_client: bool, payload: bytes), 10 ms apart."""
    with pcap_writer(path) as f:
        for i, (up, payload) in enumerate(packets):
            frame = (ip_udp(client_port, server_port, payload) if up
                     else ip_udp(server_port, client_port, payload))
            t = t0 + i * 0.010
            sec, usec = int(t), int(round((t - int(t)) * 1e6))
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)


# ---------------------------------------------------------------- building blocks

def pad4(n):
    return (4 - n % 4) % 4


def stun_attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\x00" * pad4(len(v))


def stun(msg_type, attrs, rng, fingerprint=False):
    body = b"".join(stun_attr(t, v) for t, v in attrs)
    tid = bytes(rng.getrandbits(8) for _ in range(12))
    length = len(body) + (8 if fingerprint else 0)
    msg = struct.pack("!HHI", msg_type, length, MAGIC) + tid + body
    if fingerprint:
        crc = (zlib.crc32(msg) & 0xFFFFFFFF) ^ 0x5354554E
        msg += struct.pack("!HHI", 0x8028, 4, crc)
    return msg


def rand_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


SIZES = [88, 104, 104, 104, 120, 120, 120, 120, 136, 136]  # profile.rs voice(): 1:3:4:2


class Rtp:
    """An SRTP-looking stream: random SSRC, sequence and timestamp starts, random payload."""

    def __init__(self, rng, pt, first_byte=0x80, ext=None):
        self.rng, self.pt, self.first, self.ext = rng, pt, first_byte, ext
        self.ssrc = rng.getrandbits(32)
        self.seq = rng.getrandbits(16)
        self.ts = rng.getrandbits(32)

    def packet(self, wire_len):
        hdr = struct.pack("!BBHII", self.first, self.pt, self.seq, self.ts, self.ssrc)
        if self.ext is not None:  # one-byte header extension block, as WhatsApp's 0x90 packets
            hdr += struct.pack("!HH", self.ext, 1) + rand_bytes(self.rng, 4)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 960) & 0xFFFFFFFF  # 20 ms at 48 kHz
        return hdr + rand_bytes(self.rng, max(0, wire_len - len(hdr)))


def no_ff(rng, n, first_lo=0x00):
    out = [rng.randrange(first_lo, 0xFF)]
    out += [rng.randrange(0, 0xFF) for _ in range(n - 1)]
    return bytes(out)


def tg_hello(peer_tag):
    # tgcalls v2 ReflectorPort::SendReflectorHello: tag, 12 x 0xFF, FE FF FF FF, u64 123 (40 bytes)
    return peer_tag + b"\xff" * 12 + b"\xfe\xff\xff\xff" + struct.pack("!Q", 123)


def tg_data(peer_tag, sender_tag, payload):
    # ReflectorPort::SendTo: tag, sender tag, u32 BE length, payload, zero padding to 4
    return (peer_tag + struct.pack("!I", sender_tag) + struct.pack("!I", len(payload))
            + payload + b"\x00" * pad4(len(payload)))


def core_like(rng, n):
    # A callwatch Probe core: version 1, kind 3, session, cookie, seq, time, zero padding.
    b = bytes([1, 3]) + rand_bytes(rng, 8) + bytes([0x33] * 16) + rand_bytes(rng, 12)
    return (b + b"\x00" * n)[:n]


# ---------------------------------------------------------------- cases

def cases(rng, n):
    out = {}

    def both(make):  # n packets up, each answered by one of the same size and shape
        pk = []
        for i in range(n):
            size = SIZES[rng.randrange(len(SIZES))]
            pk.append((True, make(size, True)))
            pk.append((False, make(size, False)))
        return pk

    def chd_rtp(stream, size):
        inner = stream.packet(size - 4)
        return struct.pack("!HH", 0x4001, len(inner)) + inner + b"\x00" * pad4(len(inner))

    # WhatsApp ----------------------------------------------------------------
    out["whatsapp-current"] = (3478, both(lambda size, up: stun(
        0x0800, [(0x4000, b"\x00\x00\x00\x01"), (0x0013, core_like(rng, size - 40))], rng, True)))
    wa_up, wa_down = Rtp(rng, 120, 0x90, 0xBEDE), Rtp(rng, 120, 0x90, 0xBEDE)
    pk = [(True, stun(0x0003, [(0x4000, rand_bytes(rng, 150))], rng)),
          (False, stun(0x0103, [(0x0020, rand_bytes(rng, 8))], rng)),
          (True, stun(0x0800, [(0x4000, rand_bytes(rng, 4))], rng)),
          (False, stun(0x0800, [(0x4000, rand_bytes(rng, 4))], rng))]
    pk += both(lambda size, up: (wa_up if up else wa_down).packet(size))
    out["whatsapp-proposed"] = (3478, pk)
    # Only WhatsApp's bare 0x0801/0x0802 keepalives (20-byte header, no attribute) before media:
    # nDPI 4.2 takes 0x0800 but not 0x0801/0x0802 (stun.c 4.2 l.194), later versions take all three.
    pk = [(True, stun(0x0801, [], rng)), (False, stun(0x0802, [], rng))]
    pk += both(lambda size, up: (wa_up if up else wa_down).packet(size))
    out["whatsapp-keepalive-0801-only"] = (3478, pk)

    # Telegram ----------------------------------------------------------------
    fixed_tag = bytes([0xE7, 0x3A, 0x51, 0x9C, 0x02, 0xB8, 0x6F, 0x14,
                       0xD3, 0x47, 0xA0, 0x5E, 0x8B, 0x21, 0xC6, 0x79])
    out["telegram-current"] = (599, both(lambda size, up: tg_data(
        fixed_tag, 0x5A3C9E01, core_like(rng, size - 24))))
    for port in (599, 1400):
        tag = no_ff(rng, 16, 0xC0)
        sender = struct.unpack("!I", no_ff(rng, 4))[0]
        up_rtp, down_rtp = Rtp(rng, 111), Rtp(rng, 111)
        pk = [(True, tg_hello(tag)), (False, tg_hello(tag))]
        pk += both(lambda size, up: tg_data(tag, sender, (up_rtp if up else down_rtp).packet(size - 24)))
        out[f"telegram-proposed-{port}"] = (port, pk)
    # The hello second, after a data packet whose random payload holds an 0xFF: nDPI 4.2 gives up
    # on Telegram at the first >= 40-byte packet with a 0xFF run that is not exactly 12.
    tag = no_ff(rng, 16, 0xC0)
    first = tg_data(tag, 7, b"\x01\x01" + b"\xff" + rand_bytes(rng, 61))
    out["telegram-hello-second"] = (599, [(True, first), (True, tg_hello(tag)), (False, tg_hello(tag))]
                                    + both(lambda size, up: tg_data(tag, 7, rand_bytes(rng, size - 24))))
    # Telegram's other call path: its TURN servers on 1400 with REALM "telegram.org" (nDPI's
    # telegram_videocall.pcapng). Only nDPI >= 4.10 names it (STUN.TelegramVoip); 4.2 says STUN.
    t_up, t_down = Rtp(rng, 111), Rtp(rng, 111)
    tuser = b"%d:%s" % (1_700_000_000 + rng.randrange(10**6), rand_bytes(rng, 9).hex().encode())
    pk = [(True, stun(0x0003, [(0x0019, b"\x11\x00\x00\x00"), (0x0006, tuser),
                               (0x0014, b"telegram.org"), (0x0015, rand_bytes(rng, 8).hex().encode()),
                               (0x0008, rand_bytes(rng, 20))], rng, True)),
          (False, stun(0x0103, [(0x0016, rand_bytes(rng, 8)), (0x0020, rand_bytes(rng, 8))], rng, True))]
    pk += both(lambda size, up: chd_rtp(t_up if up else t_down, size))
    out["telegram-turn-realm-1400"] = (1400, pk)
    tag = no_ff(rng, 15, 0xC0) + b"\xff"  # a tag ending in 0xFF: the run is 13, nDPI misses it
    out["telegram-hello-tag-with-ff"] = (599, [(True, tg_hello(tag)), (False, tg_hello(tag))]
                                         + both(lambda size, up: tg_data(tag, 7, rand_bytes(rng, size - 24))))

    # Signal ------------------------------------------------------------------
    s_up, s_down = Rtp(rng, 111), Rtp(rng, 111)
    out["signal-current"] = (3478, both(lambda size, up: chd_rtp(s_up if up else s_down, size)))
    s_up, s_down = Rtp(rng, 102), Rtp(rng, 102)
    user = b"%d:%d" % (1_700_000_000 + rng.randrange(10**6), rng.randrange(10**10))
    pk = [(True, stun(0x0003, [(0x0019, b"\x11\x00\x00\x00"), (0x0006, user),
                               (0x0014, b"signal.org"), (0x0015, rand_bytes(rng, 16).hex()[:16].encode()),
                               (0x0008, rand_bytes(rng, 20))], rng, True)),
          (False, stun(0x0103, [(0x0016, rand_bytes(rng, 8)), (0x0020, rand_bytes(rng, 8)),
                                (0x000D, b"\x00\x00\x02\x58")], rng, True))]
    pk += both(lambda size, up: chd_rtp(s_up if up else s_down, size))
    out["signal-proposed"] = (3478, pk)
    # The full exchange as Signal's TURN servers run it (nDPI's stun_signal.pcapng): Allocate
    # without credentials, 401 carrying REALM "signal.org" and a NONCE, Allocate with USERNAME,
    # REALM, NONCE, MESSAGE-INTEGRITY, success; then ChannelBind and media.
    nonce = rand_bytes(rng, 8).hex().encode()
    pk = [(True, stun(0x0003, [(0x0019, b"\x11\x00\x00\x00")], rng, True)),
          (False, stun(0x0113, [(0x0009, b"\x00\x00\x04\x01Unauthorized"), (0x0015, nonce),
                                (0x0014, b"signal.org")], rng, True)),
          (True, stun(0x0003, [(0x0019, b"\x11\x00\x00\x00"), (0x0006, user), (0x0014, b"signal.org"),
                               (0x0015, nonce), (0x0008, rand_bytes(rng, 20))], rng, True)),
          (False, stun(0x0103, [(0x0016, rand_bytes(rng, 8)), (0x0020, rand_bytes(rng, 8))], rng, True)),
          (True, stun(0x0009, [(0x000C, b"\x40\x01\x00\x00"), (0x0012, rand_bytes(rng, 8)),
                               (0x0006, user), (0x0014, b"signal.org"), (0x0015, nonce),
                               (0x0008, rand_bytes(rng, 20))], rng, True)),
          (False, stun(0x0109, [], rng, True))]
    pk += both(lambda size, up: chd_rtp(s_up if up else s_down, size))
    out["signal-proposed-full-turn"] = (3478, pk)

    # Max -----------------------------------------------------------------------
    m_up, m_down = Rtp(rng, 111), Rtp(rng, 111)
    out["max-current-and-proposed"] = (50000, both(lambda size, up: (m_up if up else m_down).packet(size)))

    # Controls ------------------------------------------------------------------
    out["control-core"] = (40400, both(lambda size, up: core_like(rng, size)))
    for k in range(8):
        out[f"control-random-{k}"] = (40400, both(lambda size, up: rand_bytes(rng, size)))
    return out


def sweep(outdir, rng, flows=400, per_flow=30):
    """Many control-arm flows in one file each: fully random payloads, and random payloads
    behind the core's fixed first two bytes (version 1, kind 3). Count what nDPI makes of them:
    ndpiReader -i FILE -v 2 | grep -o 'proto: [^]]*' | sort | uniq -c"""
    makers = {
        "sweep-control-random": lambda n: rand_bytes(rng, n),
        "sweep-control-core-header-random-body": lambda n: bytes([1, 3]) + rand_bytes(rng, n - 2),
    }
    for name, make in makers.items():
        path = os.path.join(outdir, f"{name}.pcap")
        with pcap_writer(path) as f:
            t = 1_700_000_000.0
            for flow in range(flows):
                cport = 20000 + flow
                for _ in range(per_flow):
                    size = SIZES[rng.randrange(len(SIZES))]
                    for up in (True, False):
                        frame = (ip_udp(cport, 40400, make(size)) if up
                                 else ip_udp(40400, cport, make(size)))
                        t += 0.0001
                        f.write(struct.pack("<IIII", int(t), int((t - int(t)) * 1e6),
                                            len(frame), len(frame)) + frame)
        print(path)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seed = 2025
    for a in sys.argv[1:]:
        if a.startswith("--seed="):
            seed = int(a.split("=", 1)[1])
    outdir = args[0] if args else "/tmp/callwatch-ndpi-synth"
    os.makedirs(outdir, exist_ok=True)
    rng = random.Random(seed)
    for i, (name, (port, packets)) in enumerate(cases(rng, 50).items()):
        path = os.path.join(outdir, f"{name}.pcap")
        write_flow(path, port, 41000 + i, packets)
        print(path)
    if "--sweep" in sys.argv[1:]:
        sweep(outdir, rng)


if __name__ == "__main__":
    main()
