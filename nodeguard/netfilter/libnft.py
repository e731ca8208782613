"""libnftables, the library behind `nft`, through ctypes; the `nft` binary when it is missing.

Debian's `python3-nftables` binding is installed for the system Python only, so the dozen calls
nodeguard needs are declared here. Both paths take the same input (nft's text syntax, or JSON
with `json=True` for output) and run in the caller's network namespace.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading

_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    def __init__(self, command: str, rc: int, message: str) -> None:
        super().__init__(f"nft failed ({rc}): {message.strip()}")
        self.command = command
        self.rc = rc
        self.message = message


class _Lib:
    """One libnftables context; calls are serialised (a context is not thread-safe)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_int]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.restype = ctypes.c_int
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.restype = ctypes.c_int
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.base_flags = lib.nft_ctx_output_get_flags(self.ctx)
        self.lock = threading.Lock()

    def run(self, command: str, json: bool) -> tuple[int, str, str]:
        with self.lock:
            flags = self.base_flags | (_OUTPUT_JSON if json else 0)
            self.lib.nft_ctx_output_set_flags(self.ctx, flags)
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, command.encode())
            out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
            err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
            return rc, out.decode(errors="replace"), err.decode(errors="replace")


# The soname Debian and Fedora ship: dlopen finds it through ld.so's own cache. find_library,
# which runs `ldconfig -p` in a child process (~3 ms of every `check`; gcc and ld when ldconfig
# knows no such library), is asked only when that name is not there.
_SONAME = "libnftables.so.1"


def _load_libnftables() -> ctypes.CDLL:
    try:
        return ctypes.CDLL(_SONAME)
    except OSError:
        from ctypes.util import find_library  # ~5 ms (shutil, tempfile, subprocess): only when needed

        name = find_library("nftables")
        if name is None or name == _SONAME:
            raise
        return ctypes.CDLL(name)


class Nft:
    """Run nft commands: `nft.run("list table inet nodeguard", json=True)`."""

    def __init__(self, prefer_library: bool = True) -> None:
        self._lib: _Lib | None = None
        self.via = "nft binary"
        if prefer_library:
            try:
                self._lib = _Lib(_load_libnftables())
                self.via = "libnftables"
            except OSError:
                self._lib = None
        self._binary = shutil.which("nft")

    @property
    def available(self) -> bool:
        return self._lib is not None or self._binary is not None

    def run(self, command: str, *, json: bool = False) -> str:
        if self._lib is not None:
            rc, out, err = self._lib.run(command, json)
        elif self._binary is not None:
            from nodeguard.netfilter.backend import run_tool

            rc, out, err = run_tool([self._binary, *(["-j"] if json else []), "-f", "-"], command)
        else:
            raise NftError(command, -1, "neither libnftables nor the nft binary is installed")
        if rc != 0:
            raise NftError(command, rc, err or out)
        return out


_shared: dict[tuple[int, int], Nft] = {}
_shared_lock = threading.Lock()


def netns_id() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def shared_nft() -> Nft:
    """This process's libnftables context for its current network namespace.

    One per (pid, netns): a context per call would leak (none is ever freed), and a context made
    before a fork or a setns may hold a netlink socket of the namespace it was made in.
    """
    key = (os.getpid(), netns_id())
    with _shared_lock:
        nft = _shared.get(key)
        if nft is None:
            nft = _shared[key] = Nft()
        return nft


def nft_via() -> str:
    """How nft commands would run here, without making a context."""
    from ctypes.util import find_library

    if find_library("nftables"):
        return "libnftables"
    return "nft binary" if shutil.which("nft") else "nothing (neither libnftables nor nft)"
