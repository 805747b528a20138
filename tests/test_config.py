from pathlib import Path

import pytest

from lalelu.config import Config, config_from_dict, load_config, override
from lalelu.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", [*sorted(CONFIGS.glob("*.toml")), Path("lalelu/data/demo.toml")])
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"camera": {"fps": 5000}}, r"\[camera\] fps = 5000 is out of range: allowed 1 to 1000"),
        ({"camera": {"fps": "fast"}}, r"\[camera\] fps = 'fast' has the wrong type: expected a number"),
        ({"camera": {"fsp": 100}}, r"unknown key \[camera\] fsp; known keys: .*fps"),
        (
            {"engine": {"kind": "onnx"}},
            r"\[engine\] kind = 'onnx' is not allowed: choose one of 'auto', 'litert'",
        ),
        ({"edge": {"backend": "nohost"}}, r"\[edge\] backend = 'nohost' must be HOST:PORT"),
        ({"backend": {"cpus": [0, "1"]}}, r"\[backend\] cpus .* expected a list of integers"),
        ({"backend": {"sched_fifo": 1}}, r"expected true or false"),
        ({"cameras": {}}, r"unknown section \[cameras\]"),
        ({"camera": {"source": "replay"}}, r"needs \[camera\] path"),
        ({"backend": {"allow": ["pi-stage-left"]}}, r"'pi-stage-left' is not an IP address"),
        ({"edge": {"reply_timeout_s": 0}}, r"\[edge\] reply_timeout_s = 0 is out of range"),
    ],
)
def test_bad_values_name_key_value_and_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "host.toml")


def test_cli_override_is_checked_like_the_file():
    with pytest.raises(ConfigError, match=r"command line: \[engine\] threads = 0 is out of range"):
        override(Config(), "engine", threads=0)
    assert override(Config(), "engine", threads=3).engine.threads == 3


def test_broken_toml_and_missing_file(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("[camera\nfps=1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.toml")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[output]\nmapping = "Schlagzeug-\u00e4"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml is not UTF-8 text \(byte 31\).*save it as UTF-8"):
        load_config(latin1)


def test_a_mapping_that_is_not_utf8_is_one_clear_error(tmp_path):
    from lalelu.gestures.mapping import load_mapping

    bad = tmp_path / "drums.toml"
    bad.write_bytes(b"\xff\xfe[instrument]\n")
    with pytest.raises(ConfigError, match=r"drums\.toml is not UTF-8 text \(byte 0\)"):
        load_mapping(bad)


def test_a_backend_host_that_cannot_be_encoded_is_unavailable_not_a_traceback():
    from lalelu.wire.link import BackendUnavailable, connect_backend

    with pytest.raises(BackendUnavailable, match="the host is not a valid name"):
        connect_backend("\u2603..\u2603:7600", 1.0)


def test_a_busy_backend_port_is_one_line_naming_the_fix():
    import socket

    from lalelu.backend.server import InferenceServer
    from lalelu.errors import LaleluError

    holder = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(
            LaleluError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*another backend may hold"
        ):
            InferenceServer(None, "127.0.0.1", holder.getsockname()[1], 1024)  # type: ignore[arg-type]
    finally:
        holder.close()
