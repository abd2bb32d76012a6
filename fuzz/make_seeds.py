#!/usr/bin/env python3
"""Writes the seed inputs of the sqe_intake, completion, handshake, admission and xml fuzz
targets into fuzz/seeds/<target>/, derived from the unit tests' inputs (daemon/src/worker.rs
tests: `blob(g)` and the refused fields of `refuses_each_kind_of_bad_field`; vmbus blob
completion tests; abi hello tests; daemon/src/admission.rs tests; the XML parser tests of
host/src/xml.rs and client/src/blob/xml.rs).
Run from the repository root: python3 fuzz/make_seeds.py"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- sqe_intake ------------------------------------------------------------------------------
OP_BLOB, OP_NOP = 1, 2
ARENA_1Q_SQ8 = 8192  # RegionGeometry::new(1, 8, 16, 64 KiB, 4096).arena_offset


def sqe(opcode=OP_BLOB, flags=0, reserved0=0, timeout=0, user=1, req=(0, 0), resp=(0, 0),
        data=(0, 0), valid=0, reserved1=0):
    return struct.pack("<BBHIQQQQIIIIQ", opcode, flags, reserved0, timeout, user, req[0],
                       resp[0], data[0], req[1], resp[1], data[1], valid, reserved1)


def blob(a=ARENA_1Q_SQ8, **kw):
    base = dict(req=(a, 100), resp=(a + 4096, 200), data=(a + 8192, 4096), valid=4096)
    base.update(kw)
    return sqe(**base)


# header: sq = 8 (1 << (1 + 2)), 1 queue, batch 32 with channels, gpa base 1 << 36, start 0
HDR = bytes([2, 0, 31, 1])
TURN, REAP, HOST = b"\x05", b"\x04", b"\x06\x07"


def raw(*sqes):
    return bytes([0, len(sqes) - 1]) + b"".join(sqes)


write("sqe_intake", "well_formed", HDR + raw(blob(), sqe(opcode=OP_NOP),
      blob(data=(0, 0), valid=0)) + TURN + HOST + REAP + TURN)
bad = [sqe(opcode=0), sqe(opcode=3), blob(flags=1), blob(reserved0=1), blob(reserved1=1),
       blob(req=(ARENA_1Q_SQ8, 0)), blob(resp=(ARENA_1Q_SQ8, 0)), blob(valid=4097),
       blob(req=(0, 100)), blob(resp=(4096, 200)), blob(data=(ARENA_1Q_SQ8 + 65536 - 4095, 4096)),
       blob(data=((1 << 64) - 11, 4096)), blob(req=(ARENA_1Q_SQ8 + 65536, 1)),
       sqe(opcode=OP_NOP, reserved1=5)]
seed = HDR
for i in range(0, len(bad), 4):
    seed += raw(*bad[i:i + 4]) + TURN + REAP
write("sqe_intake", "refused_fields", seed)
# relative placement (op 1): request at the arena, response one page in, data two pages in
rel = bytes([1]) + struct.pack("<hHhHhH", 0, 13, 256, 25, 512, 512) + bytes([0]) + b"\x07\x00"
write("sqe_intake", "relative", HDR + rel * 3 + TURN + HOST + REAP + rel + TURN)
# credits: more SQEs than CQ room, never reaped; then a page-limited channel (E2BIG)
write("sqe_intake", "credits", bytes([1, 0, 3, 1]) + (raw(blob(), blob()) + TURN) * 6 + HOST)
write("sqe_intake", "page_limit", bytes([2, 0, 0x40, 1]) + raw(blob(data=(ARENA_1Q_SQ8 + 8192, 8192), valid=0)) + TURN + REAP)
# corrupt indices: sq_tail far ahead, cq_head backwards / past the tail
write("sqe_intake", "corrupt_sq_tail", HDR + b"\x02" + struct.pack("<I", 1000) + TURN)
write("sqe_intake", "corrupt_cq_head", HDR + raw(blob(), sqe(opcode=OP_NOP)) + TURN
      + b"\x03" + struct.pack("<I", 0xFFFFFFFF) + raw(blob()) + TURN)
# wrap-around start index (u32::MAX - 2) and two queues (queue 1)
write("sqe_intake", "wrap", bytes([2, 3, 31, 1 | (1 << 5)]) + (raw(blob(a=12288)) + TURN + HOST
      + REAP) * 5)

# ---- completion ------------------------------------------------------------------------------


def req(resp_len=200, data_len=4096, state=1, chan=0):
    return (b"\x00" + struct.pack("<Q", 7) + struct.pack("<I", resp_len) + b"\x00"
            + struct.pack("<I", data_len) + b"\x00" + bytes([state | (chan << 2)]))


def comp(i=0, tweak=0, chan=0, err=None, rl=0, dl=0):
    e = b"\x00" if err is None else b"\x01" + struct.pack("<I", err)
    return b"\x02" + bytes([i, tweak, chan]) + e + bytes([rl]) + bytes([dl])


write("completion", "sent_then_completed", req() + comp() + comp())
write("completion", "stale_generation", req() + b"\x01\x00" + req() + comp(tweak=1) + comp())
write("completion", "other_channel", req(chan=1) + comp(chan=0) + comp(chan=1))
write("completion", "lengths_too_long", req() + comp(rl=1, dl=1) + comp(err=3, rl=1, dl=1))
write("completion", "timed_out_and_waiting", req(state=2) + req(state=0) + comp(0) + comp(1))
# raw completion packet (type 0xb, offset8 2, len8 4, flags 0, tid 1) with a 12-byte response
pkt = struct.pack("<HHHHQ", 0xB, 2, 4, 0, 1) + struct.pack("<III", 0, 0, 0) + b"\0" * 4
write("completion", "raw_packet", req() + b"\x03" + bytes([len(pkt)]) + pkt)
write("completion", "wrong_types", req() + b"\x04\x00\x01" + b"\x84\x00" + b"\x00" * 8
      + b"\x05\x00\x05")

# ---- handshake -------------------------------------------------------------------------------
ABI_VERSION = 1


def hello(magic=b"BRHQ", version=ABI_VERSION, sq=0, flags=0, arena=0, reserved=b"\0" * 40):
    return magic + struct.pack("<IIIQ", version, sq, flags, arena) + reserved


# daemon side: byte 0 even, then the fixup mode byte, then 64 hello bytes (+ extra)
write("handshake", "daemon_ok", b"\x00\x00" + hello())
write("handshake", "daemon_sizes", b"\x00\x00" + hello(sq=16, arena=64 << 10))
write("handshake", "daemon_bad_magic", b"\x00\x00" + hello(magic=b"XXXX"))
write("handshake", "daemon_reserved", b"\x00\x00" + hello(reserved=b"\1" + b"\0" * 39))
write("handshake", "daemon_version", b"\x00\x00" + hello(version=99))
write("handshake", "daemon_big_sq", b"\x00\x00" + hello(sq=128))
write("handshake", "daemon_odd_sq", b"\x00\x00" + hello(sq=3))
write("handshake", "daemon_big_arena", b"\x00\x00" + hello(arena=1 << 40))
write("handshake", "daemon_short", b"\x00\x10" + hello()[:1] + hello()[1:20])
write("handshake", "daemon_trailing", b"\x00\x20" + hello() + b"more bytes")
# client side: byte 0 odd, flags, shape, arena, client id, corruption bytes, 256 reply bytes
REPLY = b"\0" * 256
write("handshake", "client_honest", b"\x01\x04\x05\x03" + struct.pack("<I", 7) + REPLY)
write("handshake", "client_header", b"\x01\x05\x05\x03" + struct.pack("<I", 7) + b"\x08\x04"
      + b"\xff" * 4 + REPLY)
write("handshake", "client_index", b"\x01\x06\x05\x03" + struct.pack("<I", 7) + b"\x00\x02"
      + struct.pack("<I", 99) + REPLY)
write("handshake", "client_refused", b"\x01\x08\x00\x00" + struct.pack("<I", 7)
      + struct.pack("<IIII", 0, ABI_VERSION, 2, 0) + b"\0" * 16 + b"not allowed" + b"\0" * 213
      + b"\x01")
write("handshake", "client_truncated", b"\x01\x14\x00\x00" + struct.pack("<I", 7) + REPLY
      + b"\x80")
write("handshake", "client_fd_count", b"\x01\x24\x01\x00" + struct.pack("<I", 7) + REPLY
      + b"\x01")
write("handshake", "client_no_region", b"\x01\x44\x00\x00" + struct.pack("<I", 7) + REPLY)

# ---- admission -------------------------------------------------------------------------------
# mode, 64 hello bytes, peer (uid, gid, pid, groups), allow_uid, allow_gid, n_queues - 1,
# max_clients, fd limit, max_clients_per_uid, log2 queue depth, arena limit and its shift,
# live clients, the uid's clients, open fds (see fuzz_targets/admission.rs)


def ids(*v):
    return bytes([len(v)]) + bytes(v)


def admission(mode=0, h=None, uid=1, gid=1, groups=ids(), allow_uid=ids(1), allow_gid=ids(),
              queues=1, max_clients=10, limit=1024, per_uid=4, depth_log2=8,
              arena=(1 << 20, 0), live=0, uid_live=0, open_fds=100):
    return (bytes([mode]) + (h if h is not None else hello()) + bytes([uid, gid])
            + struct.pack("<i", 42) + groups + allow_uid + allow_gid
            + bytes([queues, max_clients]) + struct.pack("<H", limit)
            + bytes([per_uid, depth_log2]) + struct.pack("<QB", arena[0], arena[1])
            + bytes([live, uid_live]) + struct.pack("<H", open_fds))


write("admission", "grant", admission())
write("admission", "grant_sizes", admission(h=hello(sq=16, arena=4096)))
write("admission", "grant_by_group", admission(uid=5, gid=6, groups=ids(3, 7), allow_gid=ids(7)))
write("admission", "bad_magic", admission(h=hello(magic=b"XXXX")))
write("admission", "version", admission(h=hello(version=99)))
write("admission", "not_permitted", admission(uid=5, gid=5))
write("admission", "shutting_down", admission(mode=0x10))
write("admission", "max_clients", admission(live=10))
write("admission", "per_uid", admission(live=5, uid_live=4))
write("admission", "out_of_fds", admission(open_fds=1020))
write("admission", "odd_sq", admission(h=hello(sq=3)))
write("admission", "big_arena", admission(h=hello(arena=(1 << 20) + 1)))

# ---- xml -------------------------------------------------------------------------------------
write("xml", "list", b"\x00" + b'<?xml version="1.0" encoding="utf-8"?><EnumerationResults '
      b'ContainerName="c"><Prefix>a/</Prefix><Blobs><Blob><Name>a/x&amp;y</Name><Properties>'
      b'<Content-Length>12</Content-Length><Etag>"0x1"</Etag></Properties></Blob><BlobPrefix>'
      b'<Name>a/d/</Name></BlobPrefix></Blobs><NextMarker>m2</NextMarker></EnumerationResults>')
write("xml", "block_list", b"\x01" + b"<BlockList><CommittedBlocks><Block><Name>QQ==</Name>"
      b"<Size>5</Size></Block></CommittedBlocks><UncommittedBlocks/></BlockList>")
write("xml", "error", b"\x02" + b'<?xml version="1.0"?><Error><Code>BlobNotFound</Code>'
      b"<Message>nope</Message></Error>")
write("xml", "put_block_list", b"\x03" + b'<?xml version="1.0"?>\n<BlockList>\n\t<Uncommitted>'
      b"QQ==</Uncommitted><Latest>Qg==</Latest></BlockList>")
write("xml", "put_block_list_entities", b"\x03" + b"<BlockList><Committed>&#x51;Q==</Committed>"
      b"<Latest><![CDATA[Qg==]]></Latest></BlockList>")
write("xml", "set_tags", b"\x04" + b'<?xml version="1.0" encoding="utf-8"?><Tags><TagSet><Tag>'
      b"<Key>team</Key><Value>a&amp;b</Value></Tag></TagSet></Tags>")
write("xml", "round_trip", b"\x05" + "a/x&y\0<b>\0 'é\"\0dir/sub/f.bin".encode())
