"""The INIT reply flags libfuse 3.14 cannot give: parallel lookups in one folder, shared mmap with direct I/O.

Owns: answering the kernel's FUSE INIT request on the mount's behalf when the installed libfuse would
leave out of its reply a flag the mount wants. Must not touch anything else of pyfuse3 or libfuse.

Why. Without ``FUSE_PARALLEL_DIROPS`` the kernel holds a folder's lock across every LOOKUP (and READDIR)
in it: K threads opening K files of one folder are looked up one after another, each waiting for the S3
round trip of the one before. libfuse 3 wants the flag by default but, before 3.17.1, never copied it into
the INIT reply (libfuse commit c9905341, "Pass FUSE_PARALLEL_DIROPS to kernel"); Debian 12 and Ubuntu
24.04 ship 3.14. The core answers lookups concurrently (trio tasks, lookups of one name shared), so the
kernel may send them so. Without ``FUSE_DIRECT_IO_ALLOW_MMAP`` (kernel 6.6, in ``flags2``, which libfuse
3.14 does not know) the kernel refuses a shared ``mmap`` of a file opened with direct I/O (ENODEV): with
``--direct-io`` that was every file, and pandas maps the files it reads. With the flag the kernel maps
such a file through its page cache (the kernel's Documentation/filesystems/fuse-io.rst).

How. After ``pyfuse3.init`` mounted, the kernel's INIT request waits on the FUSE device. We read it,
let libfuse process it (``fuse_session_receive_buf`` / ``fuse_session_process_buf`` on pyfuse3's
session, found by its symbol in pyfuse3's module) through a socket pair put in place of the device's
descriptor, so that its reply comes to us; we set the flags in the reply (only those the kernel offered)
and write it to the device, which is back in its place. All of it happens before ``pyfuse3.main`` and
blocks nothing but the mount's start. Anything not as expected (another libfuse, a pyfuse3 without the
symbol, a reply we do not recognise) leaves the INIT to pyfuse3 as before, with one warning that says
what is lost; nothing else changes. Once we hold the request, libfuse's reply reaches the kernel
(unchanged if the change is impossible), or, if libfuse could not answer, the mount stops with an error
and is unmounted: it never hangs on a half-done handshake.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FUSE_INIT = 26  # opcode
FUSE_PARALLEL_DIROPS = 1 << 18  # INIT flags (include/uapi/linux/fuse.h)
FUSE_INIT_EXT = 1 << 30  # the INIT request and reply carry ``flags2``: flags 32-63
FUSE_DIRECT_IO_ALLOW_MMAP = 1 << 36  # a shared mmap of a file opened with FOPEN_DIRECT_IO (kernel 6.6)
FIXED_IN = (3, 17, 1)  # the first libfuse that passes the flag itself
_IN_HEADER = struct.Struct("<IIQQIIII")  # fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, padding
_INIT_IN = struct.Struct("<IIII")  # fuse_init_in: major, minor, max_readahead, flags
_OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header: len, error, unique
_INIT_OUT = struct.Struct("<IIII")  # fuse_init_out: major, minor, max_readahead, flags
_FLAGS_AT = _OUT_HEADER.size + 12  # where fuse_init_out.flags is in the reply
_FLAGS2_IN_AT = _IN_HEADER.size + _INIT_IN.size  # fuse_init_in.flags2
_FLAGS2_OUT_AT = _OUT_HEADER.size + 32  # fuse_init_out.flags2 (after max_background .. map_alignment)
SESSION_SYMBOL = "__pyx_v_7pyfuse3_session"  # pyfuse3's ``cdef fuse_session* session``
FD_SYMBOL = "__pyx_v_7pyfuse3_session_fd"  # ... and ``cdef int session_fd`` (the FUSE device)
EXPORTED_SYMBOL = "PyInit_pyfuse3"  # a symbol of the same module that dlsym finds (for its load address)
MAX_REQUEST = 1 << 21  # read buffer for the INIT request (the kernel wants at least 8 KiB; INIT is ~100 B)
WAIT_MS = 10_000  # for the INIT request, which the kernel queued when it mounted


class _FuseBuf(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),
    ]


def offered(request: bytes) -> int:
    """The INIT flags the kernel offers in ``request`` (64 bits: ``flags2`` above, when it sends them);
    0 if ``request`` is not an INIT we can read."""
    if len(request) < _IN_HEADER.size + _INIT_IN.size:
        return 0
    opcode = _IN_HEADER.unpack_from(request)[1]
    flags = _INIT_IN.unpack_from(request, _IN_HEADER.size)[3]
    if opcode != FUSE_INIT:
        return 0
    if flags & FUSE_INIT_EXT and len(request) >= _FLAGS2_IN_AT + 4:
        flags |= struct.unpack_from("<I", request, _FLAGS2_IN_AT)[0] << 32
    return flags


def with_flags(reply: bytes, flags: int) -> bytes | None:
    """libfuse's INIT ``reply`` with ``flags`` (64 bits) set too; None if it is not a successful INIT
    reply we can read, or one that cannot carry them (then it must go to the kernel unchanged)."""
    if len(reply) < _OUT_HEADER.size + _INIT_OUT.size:
        return None
    length, error, _ = _OUT_HEADER.unpack_from(reply)
    major = _INIT_OUT.unpack_from(reply, _OUT_HEADER.size)[0]
    if length != len(reply) or error != 0 or major != 7:
        return None
    low = struct.unpack_from("<I", reply, _FLAGS_AT)[0]
    changed = bytearray(reply)
    struct.pack_into("<I", changed, _FLAGS_AT, low | (flags & 0xFFFFFFFF))
    if flags >> 32:  # flags2: read by the kernel only after FUSE_INIT_EXT, in a reply long enough
        if not low & FUSE_INIT_EXT or len(reply) < _FLAGS2_OUT_AT + 4:
            return None
        high = struct.unpack_from("<I", reply, _FLAGS2_OUT_AT)[0]
        struct.pack_into("<I", changed, _FLAGS2_OUT_AT, high | (flags >> 32))
    return bytes(changed)


def libfuse_version(libfuse: ctypes.CDLL) -> tuple[int, ...]:
    libfuse.fuse_pkgversion.restype = ctypes.c_char_p
    text = libfuse.fuse_pkgversion().decode()
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


@dataclass
class _Libfuse:
    """What the handshake needs: libfuse's two calls, free(), pyfuse3's session and its device."""

    lib: ctypes.CDLL
    libc: ctypes.CDLL
    version: tuple[int, ...]
    session: int
    device: int

    def process_one(self) -> None:
        """libfuse reads one request from its session's descriptor and answers it."""
        buf = _FuseBuf()
        got = self.lib.fuse_session_receive_buf(ctypes.c_void_p(self.session), ctypes.byref(buf))
        try:
            if got <= 0:
                raise OSError(-got if got < 0 else 0, "libfuse read no request")
            self.lib.fuse_session_process_buf(ctypes.c_void_p(self.session), ctypes.byref(buf))
        finally:
            self.libc.free(ctypes.c_void_p(buf.mem))


def symbol_values(path: Path, *names: str) -> dict[str, int]:
    """The values of symbols ``names`` in ELF64 file ``path``'s symbol table (not the dynamic one: a
    static variable is only there); a name the file does not have (or a file not ELF64) is left out."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    wanted = {name.encode() + b"\0": name for name in names}
    found: dict[str, int] = {}
    for section in sections:
        if section[1] != 2:  # SHT_SYMTAB
            continue
        strtab_at = sections[section[6]][4]
        start, size, entsize = section[4], section[5], section[9] or 24
        for at in range(start, start + size, entsize):
            st_name, _, _, _, st_value, _ = struct.unpack_from("<IBBHQQ", data, at)
            text_at = strtab_at + st_name
            end = data.find(b"\0", text_at)
            name = wanted.get(data[text_at : end + 1])
            if name is not None:
                found[name] = int(st_value)
    return found


def _find() -> _Libfuse | str:
    """Everything the handshake needs, or why it cannot be done (a reason for the log)."""
    import pyfuse3

    lib_name = ctypes.util.find_library("fuse3")
    if lib_name is None:
        return "libfuse3 not found"
    lib = ctypes.PyDLL(lib_name)  # (keeps the GIL: libfuse calls back into pyfuse3, which needs it)
    version = libfuse_version(lib)
    module = Path(pyfuse3.__file__)
    if module.suffix != ".so":
        return f"pyfuse3 is not a compiled module ({module.name})"
    at = symbol_values(module, SESSION_SYMBOL, FD_SYMBOL, EXPORTED_SYMBOL)
    if len(at) != 3:
        return "pyfuse3's session is not among its module's symbols"
    exported = ctypes.cast(getattr(ctypes.CDLL(str(module)), EXPORTED_SYMBOL), ctypes.c_void_p).value
    if exported is None:
        return "pyfuse3's module has no load address"
    base = exported - at[EXPORTED_SYMBOL]
    session = ctypes.c_void_p.from_address(base + at[SESSION_SYMBOL]).value
    device = ctypes.c_int.from_address(base + at[FD_SYMBOL]).value
    if not session or device <= 0 or os.readlink(f"/proc/self/fd/{device}") != "/dev/fuse":
        return "pyfuse3 has no session on a FUSE device"
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    for fn in (lib.fuse_session_receive_buf, lib.fuse_session_process_buf):
        fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(_FuseBuf)]
        fn.restype = ctypes.c_int
    libc.free.argtypes = [ctypes.c_void_p]
    return _Libfuse(lib, libc, version, session, device)


def _lost(flags: int) -> str:
    """What a user loses when ``flags`` are not in the INIT reply, for the warning."""
    lost = []
    if flags & FUSE_PARALLEL_DIROPS:
        lost.append("lookups in one folder stay one at a time")
    if flags & FUSE_DIRECT_IO_ALLOW_MMAP:
        lost.append("a shared mmap of a file opened with direct I/O fails with ENODEV")
    return "; ".join(lost)


def answer_init(allow_mmap: bool = False) -> bool:
    """Answer the kernel's INIT with parallel lookups allowed (when libfuse leaves them out) and, if
    ``allow_mmap``, shared memory maps of files opened with direct I/O (see the module docstring). Call
    right after ``pyfuse3.init``. True when done; False when pyfuse3.main() is left to answer INIT as
    before. Raises OSError only if the handshake broke after the request was taken (the caller unmounts)."""
    try:
        found = _find()
    except (OSError, AttributeError, ValueError) as exc:
        found = str(exc)
    version = found.version if isinstance(found, _Libfuse) else ()
    wanted = (FUSE_PARALLEL_DIROPS if version < FIXED_IN else 0) | (FUSE_DIRECT_IO_ALLOW_MMAP if allow_mmap else 0)
    if not wanted:
        return False  # this libfuse asks for parallel lookups itself, and nothing else is wanted
    if isinstance(found, str):
        log.warning("%s: the mount's FUSE handshake is libfuse's own (%s)", _lost(wanted), found)
        return False
    poll = select.poll()
    poll.register(found.device, select.POLLIN)
    if not poll.poll(WAIT_MS):
        log.warning("%s: no INIT request came from the kernel", _lost(wanted))
        return False
    real = os.dup(found.device)
    try:
        request = os.read(real, MAX_REQUEST)
        ours, libfuses = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, libfuses:
            os.dup2(libfuses.fileno(), found.device, inheritable=False)
            try:
                ours.send(request)
                found.process_one()
                reply = ours.recv(MAX_REQUEST)
            finally:
                os.dup2(real, found.device, inheritable=False)
        given = wanted & offered(request)
        changed = with_flags(reply, given) if given else None
        os.write(found.device, changed or reply)
    finally:
        os.close(real)
    missing = wanted if changed is None else wanted & ~given
    if missing == wanted and given:
        log.warning("%s: libfuse's INIT reply was not as expected", _lost(missing))
    elif missing:
        log.warning("%s: the kernel does not offer it", _lost(missing))
    log.debug("INIT answered with flags %#x added (libfuse %s)", given if changed is not None else 0, _dotted(found.version))
    return True


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
