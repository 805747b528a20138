"""Typed per-host configuration loaded from TOML; every value is checked with a message a person can act on."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lalelu import schema
from lalelu.errors import ConfigError
from lalelu.wire.protocol import DEFAULT_MAX_PAYLOAD, split_address

# The plug-in names, listed once: the configuration checks them, the CLI offers them, the factories
# (engines.create_engine, lalelu.camera.open_source, output.open_output) dispatch on them.
# auto: torch-cuda where torch sees a CUDA GPU and [engine] model is an ONNX file, litert elsewhere
ENGINE_KINDS = ("auto", "litert", "tf-savedmodel", "tensorrt", "torch-cuda")
CAMERA_SOURCES = ("still", "replay", "v4l2", "picamera2")
OUTPUT_KINDS = ("log", "midi", "osc", "synth", "none")


def _rule(
    lo: float | None = None, hi: float | None = None, choices: tuple[Any, ...] = (), doc: str = ""
) -> dict:
    return {"lo": lo, "hi": hi, "choices": choices, "doc": doc}


@dataclass(frozen=True)
class EngineConfig:
    kind: str = field(default="litert", metadata=_rule(choices=ENGINE_KINDS))
    model: str = field(default="", metadata=_rule(doc="path; empty = the bundled Lightning int8 model"))
    threads: int = field(default=2, metadata=_rule(1, 64))
    delegate: str = field(default="", metadata=_rule(choices=("", "edgetpu")))
    warmup: int = field(default=20, metadata=_rule(0, 10_000))
    precision: str = field(default="fp32", metadata=_rule(choices=("fp32", "tf32", "fp16"), doc="torch-cuda"))
    cuda_graph: bool = field(default=True, metadata=_rule(doc="torch-cuda: replay a CUDA graph per frame"))
    compile: bool = field(
        default=False, metadata=_rule(doc="torch-cuda: torch.compile first (slower start, faster frames)")
    )


@dataclass(frozen=True)
class CameraConfig:
    source: str = field(default="still", metadata=_rule(choices=CAMERA_SOURCES))
    width: int = field(default=320, metadata=_rule(16, 4096))
    height: int = field(default=240, metadata=_rule(16, 4096))
    fps: float = field(default=100.0, metadata=_rule(1, 1000))
    pixel_format: str = field(default="rgb888", metadata=_rule(choices=("rgb888", "yuv420")))
    path: str = field(default="", metadata=_rule(doc="replay: a video file or a folder of images"))
    device: int = field(default=0, metadata=_rule(0, 63))
    paced: bool = field(
        default=True, metadata=_rule(doc="replay: at the recorded rate, or as fast as possible")
    )
    still_period_s: float = field(default=1.0, metadata=_rule(0.05, 60))
    still_amplitude: float = field(
        default=0.15, metadata=_rule(0.0, 0.5, doc="the nod's amplitude, or the strokes' depth below centre")
    )
    still_motion: str = field(
        default="sine",
        metadata=_rule(
            doc='how the still photo moves: "sine" (a nod of still_period_s), "strokes" (an air drummer\'s '
            "strokes, the strokes_* keys), or the path of a CSV file with the header t_s,y (the offset in "
            "frame heights, + = down)"
        ),
    )
    strokes_bpm: float = field(default=120.0, metadata=_rule(20, 400))
    strokes_per_beat: int = field(default=1, metadata=_rule(1, 8, doc="4 = sixteenth notes"))
    strokes_accents: list[float] = field(
        default_factory=lambda: [1.0],
        metadata=_rule(0.05, 1.0, doc="each stroke's lift in turn, as a fraction of the full stroke"),
    )
    strokes_brake_ms: float = field(
        default=15.0, metadata=_rule(2, 100, doc="how long the hand brakes before the impact")
    )
    strokes_back: str = field(
        default="quick",
        metadata=_rule(
            choices=("quick", "gentle", "mixed"),
            doc="quick: the hand rebounds at once; gentle: it rests, then lifts slowly; mixed: either",
        ),
    )
    strokes_humanize_ms: float = field(
        default=0.0, metadata=_rule(0, 50, doc="SD of each impact's random offset from the beat")
    )
    strokes_seed: int = field(default=1, metadata=_rule(0, 2**31 - 1))
    v4l2_fourcc: str = field(
        default="MJPG",
        metadata=_rule(
            choices=("MJPG", "YUYV"),
            doc="v4l2: what the webcam sends; USB webcams reach > 30 fps only with MJPG",
        ),
    )


@dataclass(frozen=True)
class BackendConfig:
    listen_host: str = "127.0.0.1"
    port: int = field(default=7600, metadata=_rule(0, 65535))
    cpus: list[int] = field(default_factory=list, metadata=_rule(0, 4095))
    sched_fifo: bool = True
    fifo_priority: int = field(default=50, metadata=_rule(1, 99))
    max_payload: int = field(default=DEFAULT_MAX_PAYLOAD, metadata=_rule(1024, 64 * 1024 * 1024))
    allow: list[str] = field(default_factory=list, metadata=_rule(doc="client IPs allowed; empty = any"))
    key_file: str = field(
        default="",
        metadata=_rule(
            doc="file holding the link key every edge must prove before a frame is read (the same file as "
            "the edges' [edge] key_file); empty = no key"
        ),
    )
    telemetry: str = field(
        default="", metadata=_rule(doc="JSON-lines file for per-frame stage telemetry of the backend")
    )
    gpu_clock_period_ms: float = field(
        default=50.0, metadata=_rule(0.0, 10_000, doc="how often the GPU's SM clock is sampled; 0 = never")
    )
    max_fps_per_edge: float = field(
        default=250.0,
        metadata=_rule(
            1.0,
            100_000,
            doc="frames a second inferred for one edge (one address) at most; more are answered BUSY, so a "
            "flooding client cannot take the others' share (a 200-fps camera stays under the default)",
        ),
    )
    max_batch: int = field(
        default=8,
        metadata=_rule(
            1,
            16,
            doc="frames of different edges inferred together in one engine call at most (torch-cuda; other "
            "engines serve one at a time): the frames that have arrived, never waiting for more; 1 = serial",
        ),
    )
    batches_in_flight: int = field(
        default=2,
        metadata=_rule(
            1,
            4,
            doc="batches on the GPU at once (torch-cuda): 2 = frames that arrive while a batch runs start "
            "at once beside it (measured on an H100); 1 = they wait for it; 3-4 not measured yet",
        ),
    )
    state_file: str = field(
        default="",
        metadata=_rule(
            doc="JSON state (the edges served, frames per engine call) rewritten every 5 s for `lalelu "
            "check`; empty = $RUNTIME_DIRECTORY/backend-state.json under systemd, none elsewhere"
        ),
    )
    busy_poll_ms: float = field(
        default=0.0,
        metadata=_rule(
            0.0,
            10_000,
            doc="after each frame, poll the sockets without sleeping this long (above the camera's frame "
            "period: always while an edge plays); the next frame is seen without a CPU wake-up, at the "
            "cost of that CPU; 0 = sleep in select",
        ),
    )


@dataclass(frozen=True)
class EdgeConfig:
    backend: str = field(default="", metadata=_rule(doc="host:port of the backend; empty = infer locally"))
    key_file: str = field(
        default="",
        metadata=_rule(
            doc="file holding the link key the backend's [backend] key_file holds; empty = no key"
        ),
    )
    cpus: list[int] = field(default_factory=list, metadata=_rule(0, 4095))
    sched_fifo: bool = True
    fifo_priority: int = field(default=60, metadata=_rule(1, 99))
    max_in_flight: int = field(default=4, metadata=_rule(1, 64))
    summary_interval_s: float = field(default=5.0, metadata=_rule(0.0, 3600))
    telemetry: str = field(default="", metadata=_rule(doc="JSON-lines file for per-frame telemetry"))
    seconds: float = field(default=0.0, metadata=_rule(0.0, 10 * 86400))
    connect_timeout_s: float = field(default=5.0, metadata=_rule(0.1, 600))
    source_address: str = field(
        default="",
        metadata=_rule(
            doc="the local IP address the edge connects to the backend from; empty = the system chooses. "
            "For a Pi on two networks, or several edges on one machine (the backend counts each address's "
            "connections and frame share: tools/bench_band.py gives each edge its own 127.0.0.x)"
        ),
    )
    fallback: bool = field(
        default=True, metadata=_rule(doc="infer locally with [engine] while the backend is away")
    )
    reply_timeout_s: float = field(
        default=0.15, metadata=_rule(0.01, 60, doc="a backend silent this long with a full pipe is lost")
    )
    reconnect_max_s: float = field(
        default=4.0, metadata=_rule(0.1, 600, doc="the reconnect backoff doubles from 0.25 s up to this")
    )
    latency_budget_ms: float = field(
        default=20.0,
        metadata=_rule(
            0.0,
            10_000,
            doc="a frame that would wait longer than this behind frames in flight is skipped, not queued "
            "(the freshest frame wins); 0 = queue every frame",
        ),
    )
    busy_poll_ms: float = field(
        default=0.0,
        metadata=_rule(
            0.0,
            10_000,
            doc="after each reply, the receiver polls for the next one without sleeping this long (above "
            "the frame period: always while the backend answers); saves a CPU wake-up per reply, costs "
            "a CPU; 0 = sleep until the reply",
        ),
    )
    state_file: str = field(
        default="",
        metadata=_rule(
            doc="JSON state rewritten at every summary (`lalelu check` reads it); empty = "
            "$RUNTIME_DIRECTORY/edge-state.json under systemd, none elsewhere"
        ),
    )


@dataclass(frozen=True)
class OutputConfig:
    kind: str = field(default="log", metadata=_rule(choices=OUTPUT_KINDS))
    where: str = field(default="edge", metadata=_rule(choices=("edge", "backend")))
    mapping: str = field(
        default="", metadata=_rule(doc="mapping TOML; empty = the bundled two-hands mapping")
    )
    latency_ms: float = field(
        default=10.0,
        metadata=_rule(
            0.0,
            200.0,
            doc="a hit sounds this long after its stroke's estimated impact, the same every time, so the "
            "timing's spread is the estimate's, not where the impact fell between two frames; the "
            "reader predicts the impact where the next pose would come too late",
        ),
    )
    midi_port: str = field(
        default="", metadata=_rule(doc="substring of the port name, or a virtual port's name")
    )
    midi_api: str = field(default="alsa", metadata=_rule(choices=("alsa", "jack")))
    midi_virtual: bool = False
    osc_host: str = "127.0.0.1"
    osc_port: int = field(default=9000, metadata=_rule(1, 65535))
    osc_prefix: str = "/lalelu"
    synth_soundfont: str = field(
        default="",
        metadata=_rule(
            doc="a .sf2 General MIDI SoundFont; empty = Debian's (apt install timgm6mb-soundfont)"
        ),
    )
    synth_driver: str = field(
        default="auto",
        metadata=_rule(
            choices=("auto", "pipewire", "pulseaudio", "jack", "alsa"),
            doc="the synth's audio output; auto tries pipewire, pulseaudio, jack, alsa in that order",
        ),
    )
    synth_device: str = field(
        default="", metadata=_rule(doc='ALSA device of the synth, e.g. "hw:1"; empty = default')
    )
    synth_sample_rate: int = field(default=48000, metadata=_rule(8000, 192000))
    synth_period_size: int = field(
        default=64,
        metadata=_rule(
            16, 8192, doc="audio frames per period: smaller is less latency, too small crackles (xruns)"
        ),
    )
    synth_periods: int = field(default=2, metadata=_rule(2, 64, doc="periods in the audio buffer"))
    synth_gain: float = field(default=1.0, metadata=_rule(0.0, 10.0, doc="FluidSynth's master gain"))


@dataclass(frozen=True)
class MonitorConfig:
    enabled: bool = field(
        default=True,
        metadata=_rule(doc="serve the monitor page (picture, skeleton, hits, latency) from the edge"),
    )
    listen_host: str = field(
        default="127.0.0.1",
        metadata=_rule(doc="127.0.0.1 = this machine only; 0.0.0.0 = the LAN, then with allow or token"),
    )
    port: int = field(default=8700, metadata=_rule(0, 65535))
    allow: list[str] = field(default_factory=list, metadata=_rule(doc="client IPs allowed; empty = any"))
    token: str = field(default="", metadata=_rule(doc="if set, the page is served only with ?token=THIS"))
    video_fps: float = field(default=12.0, metadata=_rule(1.0, 30.0, doc="picture updates per second"))
    jpeg_quality: int = field(default=70, metadata=_rule(10, 95))
    max_clients: int = field(default=16, metadata=_rule(1, 256, doc="pages open at once"))
    max_requests_per_s: float = field(
        default=10.0,
        metadata=_rule(
            1.0, 1000.0, doc="HTTP requests one address may make per second (a burst of two seconds' worth)"
        ),
    )


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def _type_name(t: Any) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "bool": "true or false",
        "list[str]": "a list of strings",
        "list[float]": "a list of numbers",
    }.get(str(t), "a list of integers")


def _check_value(where: str, f: dataclasses.Field, value: Any) -> Any:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "list[int]": isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "list[float]": isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value),
    }[t]
    if not ok:
        raise schema.wrong(where, value, f"has the wrong type: expected {_type_name(t)}")
    rule = f.metadata
    for v in value if isinstance(value, list) else [value]:
        if rule.get("choices"):
            schema.choice(where, v, rule["choices"], shown=value)
        if isinstance(v, int | float) and not isinstance(v, bool):
            schema.number(where, v, rule.get("lo"), rule.get("hi"), shown=value)
    if t == "list[float]":
        return [float(v) for v in value]
    return float(value) if t == "float" else value


def _build(cls: type, section: str, data: dict[str, Any], origin: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{origin}: unknown key [{section}] {key}; known keys: {', '.join(sorted(fields))}"
            )
    kwargs = {k: _check_value(f"{origin}: [{section}] {k}", fields[k], v) for k, v in data.items()}
    return cls(**kwargs)


SECTIONS: dict[str, type] = {
    "engine": EngineConfig,
    "camera": CameraConfig,
    "backend": BackendConfig,
    "edge": EdgeConfig,
    "output": OutputConfig,
    "monitor": MonitorConfig,
}


def config_from_dict(data: dict[str, Any], origin: str = "configuration") -> Config:
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section [{key}]; known sections: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key} must be a [{key}] table")
    parts = {name: _build(cls, name, data.get(name, {}), origin) for name, cls in SECTIONS.items()}
    cfg = Config(**parts)
    validate(cfg, origin)
    return cfg


def _check_allow_list(origin: str, section: str, allow: list[str], hint: str) -> None:
    for client in allow:
        try:
            ipaddress.ip_address(client)
        except ValueError:
            raise ConfigError(
                f"{origin}: [{section}] allow = {allow!r}: {client!r} is not an IP address; {hint}, "
                "or leave it empty to allow any"
            ) from None


def validate(cfg: Config, origin: str = "configuration") -> None:
    """Checks across keys."""
    if cfg.edge.backend and split_address(cfg.edge.backend) is None:
        raise ConfigError(
            f'{origin}: [edge] backend = {cfg.edge.backend!r} must be HOST:PORT (e.g. "192.168.1.10:7600"), '
            "or empty to infer on the edge"
        )
    _check_allow_list(
        origin, "backend", cfg.backend.allow, 'list the edges\' addresses (e.g. "192.168.1.20")'
    )
    _check_allow_list(
        origin,
        "monitor",
        cfg.monitor.allow,
        'list the addresses of the phones or laptops (e.g. "192.168.1.30")',
    )
    if not is_loopback(cfg.backend.listen_host) and not (cfg.backend.allow or cfg.backend.key_file):
        raise ConfigError(
            f"{origin}: [backend] listen_host = {cfg.backend.listen_host!r} serves anyone on the network: set "
            "[backend] allow (the edges' IP addresses) or key_file (a link key the edges must prove), or "
            'listen on "127.0.0.1"'
        )
    if (
        cfg.monitor.enabled
        and not is_loopback(cfg.monitor.listen_host)
        and not (cfg.monitor.allow or cfg.monitor.token)
    ):
        raise ConfigError(
            f"{origin}: [monitor] listen_host = {cfg.monitor.listen_host!r} opens the monitor to the network: "
            "set [monitor] allow (the clients' IP addresses) or token (a secret the page URL must carry), "
            'or listen on "127.0.0.1"'
        )
    if cfg.camera.source == "replay" and not cfg.camera.path:
        raise ConfigError(
            f'{origin}: [camera] source = "replay" needs [camera] path (a video or image folder)'
        )
    if cfg.camera.pixel_format == "yuv420" and (cfg.camera.width % 2 or cfg.camera.height % 2):
        raise ConfigError(f"{origin}: [camera] yuv420 needs an even width and height")


MIN_KEY_BYTES = 16


def load_link_key(path: str, section: str) -> bytes:
    """The link key in `path` (surrounding whitespace dropped), b"" for no path; ConfigError naming the
    file and the fix when it is missing, too short, or readable by every user."""
    if not path:
        return b""
    where = f"[{section}] key_file = {path!r}"
    try:
        mode = os.stat(path).st_mode
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read it ({exc.strerror}); make one with `openssl rand -hex 32 > {path}` and "
            "copy it to the edges and the backend"
        ) from None
    if mode & stat.S_IROTH:
        raise ConfigError(f"{where}: every user can read it; chmod o-r {path}")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{where}: {len(key)} bytes, a link key needs at least {MIN_KEY_BYTES} "
            f"(`openssl rand -hex 32 > {path}`)"
        )
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def monitor_url(listen_host: str, port: int, token: str = "") -> str:
    """The monitor page's address as this machine opens it (a loopback or any-address server: localhost)."""
    local = is_loopback(listen_host) or listen_host in ("0.0.0.0", "::")
    return f"http://{'localhost' if local else listen_host}:{port}/" + (f"?token={token}" if token else "")


# Where provisioning (ansible/roles/lalelu_app) puts each host's configuration (LALELU_CONFIG_DIR: another
# root's, e.g. an image being built, or a test's)
INSTALLED_CONFIG_DIR = Path(os.environ.get("LALELU_CONFIG_DIR", "/etc/lalelu"))


def installed_config(role: str) -> Path | None:
    """The provisioned host's configuration of `role` (/etc/lalelu/<role>.toml), None where there is none.
    ConfigError when it is there but this user may not read it (it is the app's and root's only)."""
    path = INSTALLED_CONFIG_DIR / f"{role}.toml"
    if not path.exists():
        return None
    if not os.access(path, os.R_OK):
        raise ConfigError(
            f"{path} is readable by root and the app only: run it with sudo (sudo lalelu ...), "
            "or give --config another file"
        )
    return path


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read configuration {path}: {exc.strerror}; check the path given to --config"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}): a configuration is a TOML file; save it as UTF-8"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return config_from_dict(data, str(path))


def override(cfg: Config, section: str, origin: str = "command line", **values: Any) -> Config:
    """Apply command-line flags (None = not given) with the same checks as the file."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return cfg
    current = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(current)}
    checked = {k: _check_value(f"{origin}: [{section}] {k}", fields[k], v) for k, v in given.items()}
    new = dataclasses.replace(cfg, **{section: dataclasses.replace(current, **checked)})
    validate(new, origin)
    return new
