"""Every default value packet-flow uses, in one place.

Values match the Rust original where it had one (REFERENCE.md §1).
"""

MODE = "receiver"
MODES = ("sender", "receiver", "both", "reflector", "mesh")
LOCAL_ADDR = "0.0.0.0:8000"
REMOTE_ADDR = "127.0.0.1:8000"
RATE_MS = 1000.0            # milliseconds between packets
RATE_MIN_MS = 0.0001        # 10 M packets/s: beyond any NIC we can drive
RATE_MAX_MS = 3_600_000.0   # one packet an hour
INFLUX_URL = "http://localhost:8086"
DATABASE = "packet_flow"
INFLUX_ORG = "-"
INFLUX_API = "auto"         # auto = from the version header of the server's /ping
INFLUX_APIS = ("auto", "v1", "v2")
RETENTION_POLICY = ""
LOG_LEVEL = "info"
ENV_PREFIX = "PACKET_FLOW_"

DURATION_S = 0.0            # 0 = until a signal
COUNT = 0                   # 0 = unlimited
SIZE = 0                    # 0 = the smallest packet of the chosen wire format
DSCP = 0
TTL = 0                     # 0 = the kernel's default
WIRE = "native"
WIRES = ("native", "legacy", "stamp")
STAMP_PORT = 862
TIMER = "precise"
TIMERS = ("precise", "economy")
INTERVAL_S = 1.0
INTERVAL_MIN_S = 0.001       # shortest record (and InfluxDB flush) interval
OUTPUT = "console"
STALL_TIMEOUT_S = 5.0
FORGET_TIMEOUT_S = 60.0

# Scheduler
SPIN_NS = 100_000           # precise timer: first spin; it then adapts to the wake-up lateness
REALTIME_PRIORITY = 10      # precise timer: SCHED_FIFO priority where permitted
REALTIME_MIN_INTERVAL_NS = 200_000  # ... only for intervals this long (spin <= ~1/2 of a core)
TIMER_SLACK_NS = 1          # prctl(PR_SET_TIMERSLACK): 1 ns = as exact as the kernel allows
BATCH_MAX = 64              # packets per sendmmsg/recvmmsg ...
MESH_BATCH = 256            # ... in mesh mode, unless --batch is given
CATCHUP_NS = 5_000_000      # a sender this far behind skips slots instead of sending them late
LATENESS_SAMPLES_PER_S = 100_000  # timer lateness is measured on at most this many slots/s
GSO_SEGMENTS = 64           # packets per UDP_SEGMENT super-datagram
GSO_BELOW_NS = 20_000       # use UDP GSO when the interval is shorter than this (50k packets/s)

# Receiver
RING_CAPACITY = 1 << 17     # records in the receive ring (104 bytes each: 13 MiB)
RCVBUF_BYTES = 8 << 20
RECEIVE_COALESCE_NS = 500_000  # after draining the socket, let datagrams queue this long
RECEIVE_COALESCE_MAX_NS = 20_000_000  # ... or longer at low rates (half a batch), at most this
SEQ_WINDOW = 1 << 17        # sequences remembered for duplicate/late detection (at most)
SEQ_WINDOW_INITIAL = 1 << 10  # ... at first; a flow's window doubles as it needs
MAX_FLOWS = 10_000          # flows tracked at once (bounds the work of every interval tick)
MAX_FLOW_MEMORY_MIB = 256   # memory budget of all flows together (--max-flow-memory)
FLOW_BYTES = 4096           # a flow's Python objects, beyond its numpy buffers (measured)
FORGOTTEN_BYTES = 2048      # a forgotten flow's compact record (measured: 1.6 KB)
FORGOTTEN_MAX = 100_000     # compact records of forgotten flows kept (oldest go first) ...
REJECTED_REPEAT_S = 60.0     # console: a source's rejected datagrams told at most this often
REJECTED_SOURCES_MAX = 64    # sources of malformed datagrams named per interval; the rest are "other"
FORGOTTEN_KEEP_S = 86_400.0  # ... and for how long: a sender back within a day resumes
CLOSED_GRACE_S = 1.0        # a closed flow takes stragglers at least this long after FINAL
RESTART_BACK = 1000         # legacy/STAMP: a jump back this far with a newer send time is a restart

# Reflector
REFLECT_MAX_PPS = 2_000_000  # replies/s to one source address: above one sender's top rate

# InfluxDB sink
FLUSH_INTERVAL_S = 0.0      # 0 = the record interval
SPOOL_DIR = ""              # "" = a packet-flow folder under the system temp dir
SPOOL_MAX_BYTES = 1 << 30   # spool cap; past it the oldest points go (0 = no cap)
SINK_MEMORY_POINTS = 200_000  # memory bound while the server answers (a constant, not an option)
SINK_QUEUE_RECORDS = 100_000
COMPAT_MAX_PPS = 10_000     # per-packet `latency` points per second per flow
SHUTDOWN_FLUSH_S = 5.0

# Authentication

# InfluxDB sink: writer internals (added by the influx sink)
SINK_CHUNK_POINTS = 50_000  # points per HTTP write request
SINK_HTTP_TIMEOUT_S = 10.0
SINK_BACKOFF_MIN_S = 0.25   # first retry after a failed write; doubles up to the max
SINK_BACKOFF_MAX_S = 5.0
SINK_WARN_EVERY_S = 60.0    # a persisting write problem is logged again at most this often
SINK_SPOOL_RETRY_S = 5.0    # after a failed spool write (disk full), memory only this long
SINK_MEMORY_HARD_FACTOR = 4  # spool failing: memory holds up to this x memory points, then drops
SINK_WRITER_FAILURES = 3     # the same exception this many times in a row stops the writer
SINK_WRITER_RESTART_S = 0.5  # pause before the writer restarts after an unexpected exception

# Report (packet-flow report): figure geometry
REPORT_WIDTH_IN = 16.0      # figure width, inches
REPORT_ROW_IN = 3.2         # height of one flow's row of panels, inches
REPORT_HEADER_IN = 0.6      # height of the run title, inches
REPORT_MATRIX_IN = 5.0      # height of a mesh run's pair matrix (heatmaps), inches
REPORT_DPI = 100            # PNG pixels per inch

# Loops and threads
RECEIVE_SLICE_NS = 50_000_000  # receiver: longest pump before analysis and ticks
RECEIVER_GRACE_S = 0.3      # `both`: time for the final packet to arrive after the sender ends
SIGNAL_FLUSH_S = 1.5        # bounded sink flush after a stop signal (exit within 2 s)
GIL_SWITCH_S = 0.0001       # how long the sender may wait for another thread's GIL
RTT_SLICE_NS = 10_000_000   # --rtt: longest schedule slice between two reply pumps
PUMP_MARGIN_NS = 2_000_000  # --rtt: wait for replies only when no slot is due this soon
RTT_WAIT_NS = 500_000_000   # --rtt: how long to wait for the last replies after the final packet
RTT_NO_REPLY_S = 3.0        # --rtt: warn when no reply at all came back after this long
RTT_RING = 1 << 17          # --rtt: receive ring records
THREAD_STOP_S = 2.0         # `both`: longest wait for the receiver thread after stop()
OUTPUT_QUEUE_RECORDS = 50_000  # records queued for the output thread; beyond, new ones are dropped

# Mesh peers (--peers, --peer-refresh, --peer-subset, --name)
PEER_REFRESH_S = 30.0       # re-resolve names, dns: and srv: entries this often
PEER_REFRESH_MIN_S = 0.1
PEER_FILE_POLL_S = 1.0      # a peers file is re-read within this long of a change
PEER_LOOKUP_TIMEOUT_S = 5.0  # longest wait for one lookup (at most the refresh interval)
PEER_NAME_KEEP_S = 60.0     # a PTR name is kept this long after its peer left (its last records)
PEER_EMPTY_REFRESHES = 3    # an empty DNS answer removes peers only this many refreshes in a row
PEER_SUBSET = 0             # 0 = probe every peer
DNS_PORT = 53
DNS_TIMEOUT_S = 2.0         # srv: one query to one nameserver
DNS_ATTEMPTS = 2            # srv: rounds over the nameservers

# Prometheus output
PROMETHEUS_MAX_SERIES = 2000  # label sets per table; new flows beyond count as source="overflow"
PROMETHEUS_ACTIVE_S = 300.0   # render after every tick while a scraper came this recently

# Mesh (packet_flow/mesh.py) and names (packet_flow/names.py)
NAMES_MAX = 65536           # sender names kept by session (oldest first out)
MESH_MAX_PEERS = 4096       # pairs one mesh node sends to
MESH_SLICE_NS = 50_000_000  # longest schedule slice between two reads of the socket
MESH_LATENESS_SAMPLES = 1 << 16  # lateness samples the send thread takes back per slice
MESH_WAKE_NS = 1_000_000    # economy timer: wake-ups at least this far apart ...
MESH_WAKE_MAX_NS = 10_000_000  # ... or a 10th of a pair's interval, at most this
MESH_LINGER_S = 1.0         # after its own finals: receive (and answer) until peers finish

# search (packet_flow/search.py): NDR/PDR trials
SEARCH_PRECISION = 0.01     # stop when the bounds are this close (a ratio of the upper one)
SEARCH_MAX_RATE = 1_000_000  # packets/s of the first trial (the sender's top rate)
SEARCH_MIN_RATE = 1000      # packets/s of the first, handshake trial (it must be answered)
SEARCH_TRIAL_S = 10.0       # a full-length (confirmation) trial
SEARCH_SHORT_DIVISOR = 4    # short trials last a quarter of a full one (at most SEARCH_SHORT_S)
SEARCH_SHORT_S = 1.0
SEARCH_MAX_TRIALS = 60
SEARCH_SENDER_RETRIES = 2   # a sender-limited trial is run again this often before it counts
SEARCH_ANSWER_S = 2.0       # wait this long after a trial's FINAL for the receiver's answer
SEARCH_SEGMENT_S = 0.5      # a trial is sent in segments this long (each its own flow) ...
SEARCH_PAUSE_S = 0.1        # ... this far apart: its SCHED_FIFO sender stays under RT throttling
SEARCH_SIZE = 64            # UDP payload bytes of a trial's packets
SENDER_MISSED_MAX = 0.1     # a trial with more slots sent late (share of sent): sender-limited
SENDER_SLOW_MAX = 0.01      # ... and one whose sender kept a rate this much below the trial's
