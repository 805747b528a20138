"""`fab bench` end to end against a real SSH server started here, hosts from the Ansible inventory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import free_port, wait_until

pytestmark = pytest.mark.process  # starts servers or `lalelu` processes

ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        pytest.fail("sshd is missing: tools/test installs Debian's openssh-server; run it, or apt install it")
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "user_key")], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d, 0o700)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    wait_until(
        "sshd listening",
        lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
        timeout_s=10,
        every_s=0.1,
        alive=proc,
        context=(d / "sshd.log").read_text,
    )
    yield {"port": port, "key": str(d / "user_key"), "user": os.environ.get("USER") or "root", "dir": d}
    proc.terminate()
    proc.wait(10)


def inventory(tmp_path: Path, sshd: dict, venv: str) -> Path:
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  children:\n    backend:\n      hosts:\n        loopback-backend:\n"
        f"          ansible_host: 127.0.0.1\n          ansible_port: {sshd['port']}\n"
        f"          ansible_user: {sshd['user']}\n          ansible_ssh_private_key_file: {sshd['key']}\n"
        f"          lalelu_venv: {venv}\n"
    )
    return inv


def fab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, "-r", str(ROOT), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_fab_bench_runs_the_real_bench_over_ssh(sshd, tmp_path):
    inv = inventory(tmp_path, sshd, sys.prefix)
    r = fab(
        "bench",
        "--group",
        "backend",
        "--configs",
        "plain,pinned",
        "--threads",
        "1",
        "--count",
        "30",
        "--warmup",
        "5",
        "--cpu",
        "0",
        "--inventory",
        str(inv),
        "--results",
        str(tmp_path / "results"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loopback-backend" in r.stdout and "pinned" in r.stdout
    # no service runs here: its live line says so rather than failing the bench
    assert "loopback-backend  no live figures: the service is not running" in r.stdout, r.stdout
    run_dir = next((tmp_path / "results").iterdir())
    report = json.loads((run_dir / "loopback-backend.json").read_text())
    assert [x["config"] for x in report["results"]] == ["plain", "pinned"]
    assert report["results"][1]["affinity"] == [0]
    assert report["machine"]["cpu_count"] == os.cpu_count()


def test_fab_names_a_host_missing_from_the_inventory(sshd, tmp_path):
    inv = inventory(tmp_path, sshd, sys.prefix)
    r = fab("bench", "--hosts", "nosuchhost", "--inventory", str(inv), cwd=tmp_path)
    assert r.returncode != 0
    assert "nosuchhost not in the inventory; known: loopback-backend" in r.stderr + r.stdout


def test_fab_says_when_the_venv_is_missing(sshd, tmp_path):
    inv = inventory(tmp_path, sshd, "/nonexistent/venv")
    r = fab("bench", "--inventory", str(inv), cwd=tmp_path)
    assert r.returncode != 0
    assert "no lalelu in /nonexistent/venv" in r.stderr + r.stdout


def test_fab_says_when_a_host_is_unreachable(tmp_path):
    inv = inventory(tmp_path, {"port": free_port(), "user": "root", "key": "/dev/null"}, sys.prefix)
    r = fab("status", "--inventory", str(inv), cwd=tmp_path)
    assert r.returncode != 0
    assert "is unreachable" in r.stderr + r.stdout


@pytest.fixture
def not_ssh():
    """A port that answers, but not with SSH (a web server on the wrong port): paramiko's worst case."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_fab_serves_the_reachable_hosts_and_says_each_unreachable_one_in_one_line(sshd, not_ssh, tmp_path):
    inv = inventory(tmp_path, sshd, sys.prefix)
    inv.write_text(
        inv.read_text() + f"    edge:\n      hosts:\n        wrong-port:\n          ansible_host: 127.0.0.1\n"
        f"          ansible_port: {not_ssh}\n          ansible_user: root\n"
        f"        switched-off:\n          ansible_host: 127.0.0.1\n          ansible_port: {free_port()}\n"
    )
    r = fab("status", "--inventory", str(inv), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "== loopback-backend (127.0.0.1)" in r.stdout and "isolated" in r.stdout  # served all the same
    for name in ("wrong-port", "switched-off"):
        said = [line for line in out.splitlines() if name in line]
        assert len(said) == 2 and "is unreachable" in said[0], said  # its line, and the summary's
    assert "Traceback" not in out and "Exception" not in out, out
    assert r.stderr.strip().splitlines()[-1] == "unreachable: wrong-port, switched-off"
    # Fabric's own host list picks inventory hosts by name: only that one is served
    r = fab("-H", "loopback-backend", "status", "--inventory", str(inv), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== loopback-backend" in r.stdout and "wrong-port" not in r.stdout + r.stderr


def test_every_fab_task_option_has_help_and_no_short_flag():
    """`fab --help TASK` explains every option; no option takes a short flag (--hosts took -h, help's)."""
    import inspect

    sys.path.insert(0, str(ROOT))
    from invoke import Task

    import fabfile

    tasks = [v for v in vars(fabfile).values() if isinstance(v, Task)]
    assert {t.name for t in tasks} >= {"bench", "check", "status", "logs", "play-test", "convert"}
    for t in tasks:
        options = [p for p in inspect.signature(t.body).parameters if p != "c"]
        assert set(options) <= set(t.help), (t.name, set(options) - set(t.help))
        assert not t.auto_shortflags, t.name
    r = subprocess.run([FAB, "-r", str(ROOT), "--help", "bench"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--hosts=STRING" in r.stdout and "-h STRING" not in r.stdout, r.stdout


def test_fab_check_runs_lalelu_check_on_each_host_and_says_ready(sshd, tmp_path):
    inv = inventory(tmp_path, sshd, sys.prefix)
    demo = str(ROOT / "lalelu/data/demo.toml")  # the latency limit is generous: a busy CI machine is no fault
    r = fab("check", "--inventory", str(inv), "--config", demo, "--max-p99-ms", "2000", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== loopback-backend (127.0.0.1, backend)" in r.stdout
    assert "go     model" in r.stdout and "READY TO PLAY" in r.stdout
    assert r.stdout.rstrip().endswith("loopback-backend  READY")


def test_fab_check_exits_non_zero_when_a_host_is_not_ready(sshd, tmp_path):
    inv = inventory(tmp_path, sshd, sys.prefix)
    bad = tmp_path / "backend.toml"
    bad.write_text(f'[engine]\nmodel = "{tmp_path / "thunder.tflite"}"\n')
    r = fab("check", "--inventory", str(inv), "--config", str(bad), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NO-GO  model" in r.stdout and "loopback-backend  NOT READY" in r.stdout
    assert "not ready: loopback-backend" in r.stderr


def test_fab_reads_the_inventory_through_ansible_ini_and_group_vars(sshd, tmp_path):
    """An INI inventory with group_vars/ beside it: what Ansible sees is what fab uses."""
    (tmp_path / "hosts.ini").write_text(
        "[backend]\n"
        f"pc ansible_host=127.0.0.1 ansible_port={sshd['port']} ansible_user={sshd['user']} "
        f"ansible_ssh_private_key_file={sshd['key']}\n"
    )
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars/backend.yml").write_text("lalelu_venv: /from/group_vars/venv\n")
    r = fab("bench", "--inventory", str(tmp_path / "hosts.ini"), cwd=tmp_path)
    assert r.returncode != 0
    assert "pc: no lalelu in /from/group_vars/venv" in r.stderr + r.stdout
    (tmp_path / "group_vars/backend.yml").write_text('lalelu_venv: "{{ somewhere }}"\n')
    r = fab("bench", "--inventory", str(tmp_path / "hosts.ini"), cwd=tmp_path)
    assert "pc: lalelu_venv = '{{ somewhere }}' is a template" in r.stderr + r.stdout


def test_the_edges_monitor_page_address_comes_from_the_inventory(tmp_path):
    """`fab check` prints it for the phones at the venue: the edge's address and its token, or says that
    the page is the Pi's own."""
    sys.path.insert(0, str(ROOT))
    import fabfile

    (tmp_path / "hosts.ini").write_text(
        "[edge]\n"
        "stage-left ansible_host=192.0.2.21 lalelu_monitor_token=venue-token-0123456789\n"
        "stage-right ansible_host=192.0.2.22\n"
        "[backend]\n"
        "pc ansible_host=192.0.2.10 lalelu_monitor_token=not-an-edge-0123456789\n"
    )
    hosts = fabfile.load_inventory(tmp_path / "hosts.ini")
    assert hosts["stage-left"].monitor == "http://192.0.2.21:8700/?token=venue-token-0123456789"
    assert hosts["stage-right"].monitor == "" and hosts["pc"].monitor == ""
