# packet_flow._io: batch UDP I/O for packet-flow. sendmmsg/recvmmsg on nonblocking sockets,
# nanosecond timestamps, a numpy ring of parsed receive records, an absolute-deadline
# scheduler, and a reflector. One extension module (one translation unit, so the codecs and
# clock reads inline into the send and receive loops), built from one file per concept,
# included below in dependency order:
#
#   includes/syscalls.pxd  extern-only kernel and libc declarations
#   includes/crypto.pxd    extern-only OpenSSL libcrypto declarations (SHA-256, CRYPTO_memcmp)
#   status.pxi             Status (DONE, INTERRUPTED, AGAIN, REFUSED, NO_GSO), the errno path
#   clock.pxi              CLOCK_REALTIME reads, absolute sleeps, waiting
#   hmac.pxi               HMAC-SHA-256 with per-key precomputed states, constant-time check
#   wire.pxi               wire constants (packet_flow/wire.py imports them), record, codecs
#   names.pxi              node names in band: FLAG_NAMED, the receiver's name notes
#   sender.pxi             _send_all, Sender and its schedule
#   receiver.pxi           Receiver and its ring
#   reflector.pxi          Reflector: a Receiver that answers
#   mesh.pxi               MeshSender: one socket, many destinations, one schedule
#
# Rules: the GIL is released only around syscalls and the C loops that feed them; every
# failed syscall goes through _errno_path; nothing raises out of parsing: bad datagrams are
# counted by reason. Build directives and flags live in setup.py only.

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (EACCES, EAGAIN, ECONNREFUSED, EHOSTDOWN, EHOSTUNREACH, EINTR, EINVAL,
                         EIO, EMSGSIZE, ENETDOWN, ENETUNREACH, ENOBUFS, EPERM, errno)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from includes.crypto cimport *
from includes.syscalls cimport *

import os

import numpy as np

# Linux socket options the standard socket module does not name (packet_flow/sockets.py).
SO_TIMESTAMPNS_ = SO_TIMESTAMPNS
SO_RXQ_OVFL_ = SO_RXQ_OVFL
UDP_SEGMENT_ = UDP_SEGMENT
UDP_GRO_ = UDP_GRO

include "status.pxi"
include "clock.pxi"
include "hmac.pxi"
include "wire.pxi"
include "names.pxi"
include "sender.pxi"
include "receiver.pxi"
include "reflector.pxi"
include "mesh.pxi"
