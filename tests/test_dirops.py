"""fuse/dirops.py: the INIT reply that allows parallel lookups in a folder (the FUSE behaviour itself is
shown through a mount in test_lookups.py); these check the bytes and the symbol lookup it relies on."""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from pathlib import Path

import pyfuse3

from s3files.fuse import dirops

HEADER_IN = struct.Struct("<IIQQIIII")
INIT_IN = struct.Struct("<IIII")


def init_request(flags: int, opcode: int = dirops.FUSE_INIT) -> bytes:
    body = INIT_IN.pack(7, 45, 131072, flags)
    return HEADER_IN.pack(HEADER_IN.size + len(body), opcode, 2, 0, 0, 0, 0, 0) + body


def init_reply(flags: int, error: int = 0, major: int = 7) -> bytes:
    # fuse_init_out of protocol 7.31: major, minor, max_readahead, flags, max_background,
    # congestion_threshold, max_write, time_gran, max_pages, map_alignment, unused[8]
    body = struct.pack("<IIIIHHIIHH8I", major, 31, 131072, flags, 0, 0, 1 << 20, 1, 256, 0, *([0] * 8))
    return struct.pack("<IiQ", 16 + len(body), error, 2) + body


def test_the_reply_gets_the_flag_and_keeps_every_other_byte() -> None:
    reply = init_reply(0x4040B029)
    changed = dirops.with_parallel_dirops(reply)
    assert changed is not None and len(changed) == len(reply)
    assert struct.unpack_from("<I", changed, 28)[0] == 0x4040B029 | dirops.FUSE_PARALLEL_DIROPS
    assert changed[:28] == reply[:28] and changed[32:] == reply[32:]


def test_a_reply_that_is_not_a_successful_init_is_left_alone() -> None:
    assert dirops.with_parallel_dirops(init_reply(0, error=-71)) is None  # EPROTO: libfuse refused
    assert dirops.with_parallel_dirops(init_reply(0, major=8)) is None  # "ask again with 7.x"
    assert dirops.with_parallel_dirops(init_reply(0)[:30]) is None  # short
    truncated_length = struct.pack("<I", 20) + init_reply(0)[4:]
    assert dirops.with_parallel_dirops(truncated_length) is None  # its length field disagrees


def test_the_flag_is_set_only_when_the_kernel_offered_it() -> None:
    assert dirops.offered_parallel_dirops(init_request(0x73FFFFFB))
    assert not dirops.offered_parallel_dirops(init_request(0x73FFFFFB & ~dirops.FUSE_PARALLEL_DIROPS))
    assert not dirops.offered_parallel_dirops(init_request(0x73FFFFFB, opcode=1))  # a LOOKUP
    assert not dirops.offered_parallel_dirops(init_request(0x73FFFFFB)[:50])


def test_pyfuse3s_session_and_device_are_among_its_symbols() -> None:
    """The handshake finds pyfuse3's session by its symbol; an installed pyfuse3 built without them (or
    a libfuse that passes the flag itself) leaves INIT to pyfuse3, with a warning."""
    module = Path(pyfuse3.__file__)
    found = dirops.symbol_values(module, dirops.SESSION_SYMBOL, dirops.FD_SYMBOL, dirops.EXPORTED_SYMBOL, "no such")
    assert set(found) == {dirops.SESSION_SYMBOL, dirops.FD_SYMBOL, dirops.EXPORTED_SYMBOL}
    assert len({found[dirops.SESSION_SYMBOL], found[dirops.FD_SYMBOL]}) == 2
    assert dirops.symbol_values(Path(__file__), dirops.SESSION_SYMBOL) == {}  # not ELF
    lib = ctypes.PyDLL(ctypes.util.find_library("fuse3"))
    assert dirops.libfuse_version(lib)[0] == 3
