"""Reflector mode: answer every test packet to its sender, and account what arrives.

The reflection itself happens inside the Cython receive path (recvmmsg in, sendmmsg out, no
Python per packet): native packets come back with the REFLECTED flag, this reflector's own
per-flow sequence, T2 (kernel receive time) and T3 (send time); STAMP Session-Sender packets get
an RFC 8762 §4.3 Session-Reflector reply from a stateful reflector (own per-flow sequence,
received TTL copied, SSID kept). Rules:

- The wire is chosen, not detected: `--wire stamp` makes this a STAMP Session-Reflector
  (default port 862); otherwise it reflects native packets and accounts legacy ones (legacy
  packets have no room for reflector timestamps and are not answered). The two cannot share
  a port because STAMP has no magic bytes to tell it from anything else.
- What arrives is accounted as by a receiver: ordinary `interval`/`summary` records per flow
  (the forward direction), and the socket-wide `receiver` record with a `reflected` count.
- STAMP replies carry this host's clock Error Estimate (packet_flow.clock_error.estimate,
  read at start): S only when the kernel says the clock is synchronised.
- Replies of one batch to the same address with the same length leave as UDP GSO messages
  (one trip through the stack for up to 64 replies; the receiver still sees one datagram per
  reply); the core falls back to one datagram per message if the kernel refuses GSO (EIO).
- Replies leave from the socket the test packet arrived on, to the packet's source address.
- Never an amplifier: a reply is exactly as long as its request (native requests shorter
  than a reply, 56 bytes or 72 with --key, are malformed `short_probe` and get none; the
  --rtt sender makes its probes that long), and each source address gets at most
  --reflect-max-pps replies per second (`reflect_limited` counts the refused). With --key
  only probes whose tag verifies are answered (--reflect-authenticated insists on a key).
"""

from packet_flow import _io, clock_error, sockets
from packet_flow.receiver import ReceiverLoop


class ReflectorLoop(ReceiverLoop):
    """A ReceiverLoop that reflects (see the module rules). run(deadline_ns), stop(), close()
    as ReceiverLoop; `reflected` counts the replies sent."""

    def __init__(self, cfg, emit, on_packets=None, sock=None):
        mode = _io.K_STAMP if cfg.wire == "stamp" else _io.K_NATIVE
        super().__init__(cfg, emit, on_packets, mode=mode, sock=sock, reflect=True)
        self.rx.error_estimate = clock_error.estimate()
        self.rx.reflect_gso = sockets.gso_supported(self.sock)
        self.rx.max_pps = cfg.reflect_max_pps

    @property
    def reflected(self):
        """Replies sent so far."""
        return self.rx.reflected

