"""The exception tree and the exit codes the CLI maps it to."""


class PacketFlowError(Exception):
    """Base of every error packet-flow raises on purpose."""

    exit_code = 1


class ConfigError(PacketFlowError):
    """A bad option value; the message names the option, the value and its source."""

    exit_code = 2


class SinkError(PacketFlowError):
    """A metrics sink failed in a way the user must fix (bad token, unknown bucket)."""


class WireError(PacketFlowError):
    """A datagram that is not a packet-flow packet (reference codec only)."""


class ReportError(PacketFlowError):
    """A report input file is empty, truncated or not packet-flow JSON lines."""

    exit_code = 2
