"""fuse/dirops.py: the INIT reply that allows parallel lookups in a folder (the FUSE behaviour itself is
shown through a mount in test_lookups.py); these check the bytes and the symbol lookup it relies on."""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from pathlib import Path

import pyfuse3
import pytest

from s3files.fuse import dirops

HEADER_IN = struct.Struct("<IIQQIIII")
INIT_IN = struct.Struct("<IIII")


def init_request(flags: int, opcode: int = dirops.FUSE_INIT, flags2: int | None = None) -> bytes:
    # fuse_init_in: major, minor, max_readahead, flags, then (7.36) flags2 and unused[11]
    body = INIT_IN.pack(7, 45, 131072, flags)
    if flags2 is not None:
        body += struct.pack("<I11I", flags2, *([0] * 11))
    return HEADER_IN.pack(HEADER_IN.size + len(body), opcode, 2, 0, 0, 0, 0, 0) + body


def init_reply(flags: int, error: int = 0, major: int = 7, flags2: int = 0) -> bytes:
    # fuse_init_out of protocol 7.36: major, minor, max_readahead, flags, max_background,
    # congestion_threshold, max_write, time_gran, max_pages, map_alignment, flags2, unused[7]
    body = struct.pack("<IIIIHHIIHHI7I", major, 36, 131072, flags, 0, 0, 1 << 20, 1, 256, 0, flags2, *([0] * 7))
    return struct.pack("<IiQ", 16 + len(body), error, 2) + body


EXT = dirops.FUSE_INIT_EXT


def test_the_reply_gets_the_flags_and_keeps_every_other_byte() -> None:
    reply = init_reply(0x4040B029, flags2=0x3)
    changed = dirops.with_flags(reply, dirops.FUSE_PARALLEL_DIROPS)
    assert changed is not None and len(changed) == len(reply)
    assert struct.unpack_from("<I", changed, 28)[0] == 0x4040B029 | dirops.FUSE_PARALLEL_DIROPS
    assert changed[:28] == reply[:28] and changed[32:] == reply[32:]
    both = dirops.with_flags(reply, dirops.FUSE_PARALLEL_DIROPS | dirops.FUSE_DIRECT_IO_ALLOW_MMAP)
    assert both is not None and len(both) == len(reply)
    assert struct.unpack_from("<I", both, 16 + 32)[0] == 0x3 | 1 << 4  # flags2: bit 36 - 32
    assert both[:28] == changed[:28] and both[32:48] == reply[32:48] and both[52:] == reply[52:]


def test_a_reply_that_is_not_a_successful_init_is_left_alone() -> None:
    flag = dirops.FUSE_PARALLEL_DIROPS
    assert dirops.with_flags(init_reply(0, error=-71), flag) is None  # EPROTO: libfuse refused
    assert dirops.with_flags(init_reply(0, major=8), flag) is None  # "ask again with 7.x"
    assert dirops.with_flags(init_reply(0)[:30], flag) is None  # short
    truncated_length = struct.pack("<I", 20) + init_reply(0)[4:]
    assert dirops.with_flags(truncated_length, flag) is None  # its length field disagrees
    # flags2 only in a reply that says it carries them (FUSE_INIT_EXT)
    assert dirops.with_flags(init_reply(0x4040B029 & ~EXT), dirops.FUSE_DIRECT_IO_ALLOW_MMAP) is None


def test_only_flags_the_kernel_offered_are_read() -> None:
    offered = dirops.offered(init_request(0x73FFFFFB | EXT, flags2=0x1F))
    assert offered & dirops.FUSE_PARALLEL_DIROPS and offered & dirops.FUSE_DIRECT_IO_ALLOW_MMAP
    assert not dirops.offered(init_request(0x73FFFFFB & ~dirops.FUSE_PARALLEL_DIROPS)) & dirops.FUSE_PARALLEL_DIROPS
    assert not dirops.offered(init_request(0x73FFFFFB & ~EXT, flags2=0x1F)) & dirops.FUSE_DIRECT_IO_ALLOW_MMAP
    assert not dirops.offered(init_request(0x73FFFFFB | EXT, flags2=0xF)) & dirops.FUSE_DIRECT_IO_ALLOW_MMAP
    assert dirops.offered(init_request(0x73FFFFFB, opcode=1)) == 0  # a LOOKUP
    assert dirops.offered(init_request(0x73FFFFFB)[:50]) == 0


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


def _lookups_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handshake: bool) -> tuple[int, list[str]]:
    """8 threads stat 8 names of one folder through a real mount over a store that takes 50 ms a request:
    the most lookups the core had at once, and the mount's warnings."""
    import contextlib
    import logging
    import threading
    from collections.abc import AsyncIterator

    from s3files.core.fs import FileSystem
    from s3files.fuse.mount import mounted_in_thread
    from s3files.options import MountOptions, Source, StoreOptions
    from s3files.store import MemoryStore

    if not handshake:
        monkeypatch.setattr(dirops, "_find", lambda: "turned off by the test")
    store = MemoryStore(latency=0.05)
    for n in range(8):
        store.seed(f"d/f{n}", b"x" * n)
    most = [0, 0]
    real_lookup = FileSystem.lookup

    async def lookup(self: FileSystem, parent: int, name: str) -> object:
        most[0] += 1
        most[1] = max(most)
        try:
            return await real_lookup(self, parent, name)
        finally:
            most[0] -= 1

    monkeypatch.setattr(FileSystem, "lookup", lookup)

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[MemoryStore]:
        yield store

    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    handler.setLevel(logging.WARNING)
    logging.getLogger(dirops.__name__).addHandler(handler)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(parents=True)
    opts = MountOptions(source=Source("b", ""), mountpoint=mountpoint, store=StoreOptions(endpoint_url="http://127.0.0.1:1"))
    try:
        with mounted_in_thread(opts, open_store):
            assert (mountpoint / "d").is_dir()
            most[1] = 0
            sizes: dict[int, int] = {}
            threads = [
                threading.Thread(target=lambda n=n: sizes.__setitem__(n, (mountpoint / "d" / f"f{n}").stat().st_size))
                for n in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sizes == {n: n for n in range(8)}
    finally:
        logging.getLogger(dirops.__name__).removeHandler(handler)
    return most[1], warnings


@pytest.mark.fuse
def test_a_mount_gets_lookups_of_one_folder_at_once_and_without_the_handshake_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real mount: with the INIT answered here the core has all 8 lookups at once; when the
    handshake cannot be done (here: turned off) the mount still works, one lookup at a time, and says
    so in one warning."""
    at_once, warnings = _lookups_at_once(tmp_path / "a", monkeypatch, handshake=True)
    assert at_once == 8 and warnings == []
    monkeypatch.undo()
    at_once, warnings = _lookups_at_once(tmp_path / "b", monkeypatch, handshake=False)
    assert at_once == 1
    assert len(warnings) == 1 and "one at a time" in warnings[0] and "turned off by the test" in warnings[0]
