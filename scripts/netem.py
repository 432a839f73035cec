#!/usr/bin/env python3
"""A userspace link emulator between two network namespaces, for when kernel netem is missing.

`run` opens a TUN device in each of two existing network namespaces (default hubc and hube),
addresses them (10.77.0.1/24 and 10.77.0.2/24, MTU 1500) and forwards every IP packet read from
one to the other after a fixed one-way delay, dropping each with probability --loss (a seeded
PRNG per direction). Each direction is one FIFO with due times: packets are never reordered.
The devices vanish when the process ends. It prints one line when the link is up and, on
SIGTERM or SIGINT, its counters (packets per direction, dropped, peak packets/s).

SIGUSR1 cuts the link: from then on every packet is dropped, both ways, and what was still
queued in the emulator is discarded (nothing sent before the cut arrives after it); nothing is
closed or answered, like a radio link that went silent. SIGUSR2 forwards again. Each prints a
line ("netem cut", "netem restored") and the counters show the packets dropped while cut.

`blast` sends UDP datagrams as fast as it can for a few seconds (run it inside one namespace,
towards the other, with `run` at 0 % loss): `run`'s peak packets/s then shows what the emulator
itself can forward.

Needs root (setns, /dev/net/tun). Example:

    ip netns add hubc; ip netns add hube
    scripts/netem.py run --loss 0.01 --delay-ms 25 &
    ip netns exec hube ping -c 200 -i 0.01 10.77.0.1
"""

import argparse
import collections
import ctypes
import fcntl
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def open_tun(netns, name):
    """Creates TUN device `name` inside network namespace `netns`; returns its descriptor."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
    return fd


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def run(a):
    ends = [(a.ns_a, a.dev_a, a.addr_a), (a.ns_b, a.dev_b, a.addr_b)]
    fds = []
    for netns, dev, addr in ends:
        fds.append(open_tun(netns, dev))
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "addr", "add", addr, "dev", dev)
        ip("-n", netns, "link", "set", dev, "mtu", str(a.mtu), "txqueuelen", "1000", "up")
    delay = a.delay_ms / 1000.0
    loss = a.loss
    rngs = [random.Random(a.seed), random.Random(a.seed + 1)]
    # queues[d]: packets read from fds[d], due to be written to fds[1 - d].
    queues = [collections.deque(), collections.deque()]
    seen = [0, 0]
    dropped = [0, 0]
    overrun = [0, 0]
    blackholed = [0, 0]
    stop = []
    # cut[0]: dropping everything read; changes: signals not yet acted on (queues are cleared
    # and lines printed by the loop, not in the handler, which may run between its steps).
    cut = [False]
    changes = []

    def cut_link(*_):
        cut[0] = True
        changes.append("cut")

    def restore_link(*_):
        cut[0] = False
        changes.append("restored")

    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGUSR1, cut_link)
    signal.signal(signal.SIGUSR2, restore_link)
    poller = select.epoll()
    for d, fd in enumerate(fds):
        poller.register(fd, select.EPOLLIN)
    which = {fd: d for d, fd in enumerate(fds)}
    print(
        f"netem up: {a.ns_a} {a.dev_a} {a.addr_a} <-> {a.ns_b} {a.dev_b} {a.addr_b}, "
        f"one-way delay {a.delay_ms:g} ms, loss {loss * 100:g} %, seed {a.seed}",
        flush=True,
    )
    second = int(time.monotonic())
    in_second = 0
    peak = 0
    read, write, monotonic = os.read, os.write, time.monotonic
    while not stop:
        while changes:
            change = changes.pop(0)
            if change == "cut":
                for q in queues:
                    q.clear()
            print(f"netem {change}", flush=True)
        if cut[0]:
            for q in queues:
                q.clear()
        now = monotonic()
        for d in (0, 1):
            q = queues[d]
            out = fds[1 - d]
            while q and q[0][0] <= now:
                pkt = q.popleft()[1]
                try:
                    write(out, pkt)
                except BlockingIOError:
                    overrun[d] += 1
        due = [q[0][0] for q in queues if q]
        timeout = max(0.0, min(due) - now) if due else 1.0
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            continue
        now = monotonic()
        if int(now) != second:
            peak = max(peak, in_second)
            second, in_second = int(now), 0
        for fd, _ in events:
            d = which[fd]
            q, rng = queues[d], rngs[d]
            for _ in range(512):
                try:
                    pkt = read(fd, 65536)
                except BlockingIOError:
                    break
                seen[d] += 1
                in_second += 1
                if cut[0]:
                    blackholed[d] += 1
                elif loss > 0 and rng.random() < loss:
                    dropped[d] += 1
                else:
                    q.append((now + delay, pkt))
    peak = max(peak, in_second)
    for d, (netns, _, _) in enumerate(ends):
        print(
            f"netem {netns}->{ends[1 - d][0]}: {seen[d]} packets, {dropped[d]} dropped "
            f"({dropped[d] * 100 / max(seen[d], 1):.2f} %), {overrun[d]} not written"
            + (f", {blackholed[d]} dropped while cut" if blackholed[d] else ""),
            flush=True,
        )
    print(f"netem peak {peak} packets/s (both directions)", flush=True)


def blast(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    data = b"x" * a.size
    end = time.monotonic() + a.seconds
    sent = 0
    while time.monotonic() < end:
        for _ in range(256):
            try:
                s.sendto(data, (a.to, a.port))
                sent += 1
            except OSError:
                pass
    print(f"blast: {sent} datagrams of {a.size} B in {a.seconds:g} s: {sent / a.seconds:.0f}/s")


def main():
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="emulate the link until SIGTERM")
    r.add_argument("--loss", type=float, default=0.0, help="drop probability per packet, 0..1")
    r.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay (default 25)")
    r.add_argument("--seed", type=int, default=1, help="PRNG seed (default 1)")
    r.add_argument("--mtu", type=int, default=1500)
    r.add_argument("--ns-a", default="hubc")
    r.add_argument("--dev-a", default="tun-hubc")
    r.add_argument("--addr-a", default="10.77.0.1/24")
    r.add_argument("--ns-b", default="hube")
    r.add_argument("--dev-b", default="tun-hube")
    r.add_argument("--addr-b", default="10.77.0.2/24")
    b = sub.add_parser("blast", help="send UDP datagrams as fast as possible")
    b.add_argument("--to", default="10.77.0.1")
    b.add_argument("--port", type=int, default=9)
    b.add_argument("--size", type=int, default=1400)
    b.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    if a.command == "run":
        if not 0.0 <= a.loss <= 1.0:
            sys.exit("--loss is a probability between 0 and 1")
        run(a)
    else:
        blast(a)


if __name__ == "__main__":
    main()
