#!/usr/bin/env python3
"""Sets TCP_NODELAY on another process's TCP connections to a given remote port.

For a fair request round trip with a Mosquitto bridge: Mosquitto's `set_tcp_nodelay` covers the
sockets it accepts, not the one its bridge opens, and with Nagle on that socket a reply waits for
the peer's delayed ACK (about 40 ms). This borrows the socket with pidfd_getfd(2) (Linux 5.6+,
needs ptrace rights over the process, e.g. root) and sets the option on it; the process keeps
its socket. Prints how many connections it changed; exits 1 if none.

    scripts/tcp-nodelay.py PID PORT
"""

import ctypes
import os
import socket
import sys

SYS_PIDFD_OPEN = 434  # the same number on every Linux architecture
SYS_PIDFD_GETFD = 438


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if int(f[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        sys.exit(f"pidfd_open({pid}): {os.strerror(ctypes.get_errno())}")
    changed = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if not (link.startswith("socket:[") and link[8:-1] in inodes):
            continue
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
        if fd < 0:
            sys.exit(f"pidfd_getfd({pid}, {name}): {os.strerror(ctypes.get_errno())}")
        s = socket.socket(fileno=fd)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.close()
        changed += 1
    os.close(pidfd)
    print(f"TCP_NODELAY set on {changed} connection(s) of process {pid} to port {port}")
    sys.exit(0 if changed else 1)


if __name__ == "__main__":
    main()
