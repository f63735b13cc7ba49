"""The exception tree and the exit codes the CLI maps it to."""


class PacketFlowError(Exception):
    """Base of every error packet-flow raises on purpose."""

    exit_code = 1


class ConfigError(PacketFlowError):
    """A bad option value; the message names the option, the value and its source."""

    exit_code = 2


class SocketError(ConfigError):
    """A socket the options ask for cannot be opened at start (address in use, not an
    address of this host, a privileged port, no route, an address family the host lacks);
    the message names the option, its value and source, and the cause."""


class SinkError(PacketFlowError):
    """A metrics sink failed in a way the user must fix (bad token, unknown bucket)."""


class WireError(PacketFlowError):
    """A datagram that is not a packet-flow packet (reference codec only)."""


class ReportError(PacketFlowError):
    """A report input file is empty, truncated or not packet-flow JSON lines."""

    exit_code = 2


class SearchError(PacketFlowError):
    """A rate search cannot give a result: the peer never answers, or its answer cannot be
    right (more received than sent, a bad tag under --key). No figure is invented."""
