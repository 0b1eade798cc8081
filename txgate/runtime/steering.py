# -*- test-case-name: tests.test_workers_unit -*-
"""Client-address affinity: the classic BPF program that picks a worker's socket in a SO_REUSEPORT group.

Each worker has its own TLS session cache and ticket keys (pyOpenSSL cannot share them between
processes), so a returning client must land on the worker that served it to resume its session.
The kernel runs this program for every new connection (on the SYN) and uses its result as the index
of the socket in the listener's SO_REUSEPORT group (the order the sockets started listening in):

    hash = (source address words XORed together) * 0x9E3779B1 >> 16;  index = hash % workers

IPv4 (also IPv4-mapped on a dual-stack IPv6 socket) and IPv6 are told apart by the IP version
nibble. Loads use negative offsets (``SKF_NET_OFF``) relative to the network header: at that point
the packet data starts past the TCP header. The builder is pure; ``emulate`` runs a program over a
packet in Python (for tests), ``worker_for`` is the same choice from an address string.
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68
SKF_NET_OFF = -0x100000
GOLDEN = 0x9E3779B1

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
LD, LDX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
W, B = 0x00, 0x10
ABS = 0x20
K, X, A = 0x00, 0x08, 0x10
MUL, RSH, MOD, XOR = 0x20, 0x70, 0x90, 0xA0
JA, JEQ = 0x00, 0x10
TAX = 0x00

Insn = tuple[int, int, int, int]  # (code, jt, jf, k)


def _net(offset: int) -> int:
    return (SKF_NET_OFF + offset) & 0xFFFFFFFF


def build_program(workers: int) -> list[Insn]:
    """The steering program for a group of ``workers`` sockets (instructions as (code, jt, jf, k))."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if workers == 1:
        return [(RET | K, 0, 0, 0)]
    v6 = [(LD | W | ABS, 0, 0, _net(8)), (MISC | TAX, 0, 0, 0)]
    for offset in (12, 16, 20):
        v6 += [(LD | W | ABS, 0, 0, _net(offset)), (ALU | XOR | X, 0, 0, 0)]
        if offset != 20:
            v6.append((MISC | TAX, 0, 0, 0))
    prog: list[Insn] = [
        (LD | B | ABS, 0, 0, _net(0)),          # A = first byte of the IP header
        (ALU | RSH | K, 0, 0, 4),               # A = IP version
        (JMP | JEQ | K, 0, 2, 4),               # IPv4: next; else skip 2 to the IPv6 loads
        (LD | W | ABS, 0, 0, _net(12)),         # A = IPv4 source address
        (JMP | JA, 0, 0, len(v6)),              # to the hash
        *v6,                                    # A = XOR of the four words of the IPv6 source address
        (ALU | MUL | K, 0, 0, GOLDEN),
        (ALU | RSH | K, 0, 0, 16),
        (ALU | MOD | K, 0, 0, workers),
        (RET | A, 0, 0, 0),
    ]
    return prog


def pack(program: list[Insn]) -> bytes:
    """The program as an array of ``struct sock_filter``."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def worker_for(address: str, workers: int) -> int:
    """The worker index the program gives a client address (IPv4, IPv6 or IPv4-mapped IPv6)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # the packet on the wire is IPv4
    raw = ip.packed
    if workers <= 1:
        return 0
    value = 0
    for i in range(0, len(raw), 4):
        value ^= int.from_bytes(raw[i:i + 4], "big")
    return (((value * GOLDEN) & 0xFFFFFFFF) >> 16) % workers


def emulate(program: list[Insn], ip_header: bytes) -> int:
    """Run a steering program over an IP header (the subset of classic BPF that ``build_program`` uses)."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code & 0x07 == LD:
            off = k - (SKF_NET_OFF & 0xFFFFFFFF)
            size = 1 if code & 0x18 == B else 4
            if off < 0 or off + size > len(ip_header):
                return 0  # the kernel drops to its default on an out-of-packet load
            a = int.from_bytes(ip_header[off:off + size], "big")
        elif code == MISC | TAX:
            x = a
        elif code & 0x07 == ALU:
            operand = x if code & X else k
            op = code & 0xF0
            if op == MUL:
                a = (a * operand) & 0xFFFFFFFF
            elif op == RSH:
                a >>= operand
            elif op == MOD:
                a %= operand
            elif op == XOR:
                a ^= operand
            else:
                raise ValueError(f"unsupported ALU op {code:#x}")
        elif code == JMP | JA:
            pc += k
        elif code == JMP | JEQ | K:
            pc += jt if a == k else jf
        elif code & 0x07 == RET:
            return a if code & A else k
        else:
            raise ValueError(f"unsupported instruction {code:#x}")


def attach(sock: socket.socket, workers: int) -> None:
    """Attach the steering program to a listening socket's SO_REUSEPORT group (every socket of it)."""
    program = pack(build_program(workers))
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
