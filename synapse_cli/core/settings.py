"""What ``synapse serve`` can be told, with its documented defaults: defined here once.

Light on purpose (no asyncio, no server code): the CLI reads its option defaults from here at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_STREAM_QUEUE",
    "DEFAULT_SUBSCRIBER_QUEUE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "WS_PATH",
    "Settings",
    "is_loopback",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
WS_PATH = "/ws"
DEFAULT_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}{WS_PATH}"
DEFAULT_TIMEOUT = 10.0  # seconds a client waits for the connection and for each reply
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("human", "json")
DEFAULT_SUBSCRIBER_QUEUE = 1000  # items a topic subscriber may fall behind before it is ended (-32004)
DEFAULT_STREAM_QUEUE = 1000  # items a client's stream holds for its reader before the client stops reading


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``synapse serve`` can be told (SPEC §2); the defaults are the documented ones."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)  # more tokens: token -> the identity it gives
    allow_origins: tuple[str, ...] = ()
    insecure: bool = False
    certfile: str | None = None
    keyfile: str | None = None
    max_message_size: int = 2**20
    max_connections: int = 1000
    max_inflight: int = 128
    max_batch: int = 1000
    call_timeout: float = 30.0
    grace: float = 5.0
    handshake_timeout: float = 10.0
    threads: int = 40
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    workers: int = 1
    docs: bool = True
    subscriber_queue: int = DEFAULT_SUBSCRIBER_QUEUE
    broker: str | None = None
    debug: bool = False
    log_level: str = "info"
    log_format: str = "human"

    @property
    def url(self) -> str:
        scheme = "wss" if self.certfile else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{WS_PATH}"

    def check(self) -> None:
        """ValueError for settings that cannot work together (``synapse serve`` exits 2 with it)."""
        if not is_loopback(self.host) and self.token is None and not self.tokens and not self.insecure:
            raise ValueError(f"refusing to listen on {self.host} without --token (add --insecure to allow it)")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("--certfile and --keyfile go together")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"unknown --log-level {self.log_level!r} ({', '.join(LOG_LEVELS)})")
        if self.broker is not None and not self.broker.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--broker must be a redis:// URL, not {self.broker!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"unknown --log-format {self.log_format!r} ({' or '.join(LOG_FORMATS)})")


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback ranges (127.0.0.0/8, ::1)."""
    import ipaddress  # here, not at start-up: `synapse --help` never needs it

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
