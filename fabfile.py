"""Remote tasks over the Ansible inventory (Fabric 3): `fab bench`, `fab convert`, `fab status`,
`fab logs`, `fab check`.

Hosts and their variables come from Ansible itself (`ansible-inventory --list`, with the playbook's
folder, so YAML or INI inventories, group_vars/ and host_vars/ all count), never from a second host list:
`ansible_host`, `ansible_port`, `ansible_user`, `ansible_ssh_private_key_file` and `lalelu_venv` (the
virtualenv the Ansible app role installs the project into). One SSH connection per host, reused by every
command of a task; every remote argument is quoted. Hosts are served side by side (one thread each), and
their output is printed host by host in inventory order. `fab -H NAME TASK` (Fabric's own host list) picks
inventory hosts by name or address, as --hosts does; --group picks groups. A host that cannot be reached is
one line, and the others are still served.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from fabric import Connection, task
from invoke.exceptions import Exit
from paramiko.ssh_exception import SSHException

# paramiko's transport thread logs a traceback when a host does not speak SSH; remote() says it in one line
logging.getLogger("paramiko").addHandler(logging.NullHandler())

ROOT = Path(__file__).resolve().parent
DEFAULT_INVENTORY = ROOT / "ansible" / "inventory" / "hosts.yml"
DEFAULT_VENV = "/opt/lalelu/venv"


@dataclass
class Host:
    name: str
    address: str
    user: str
    port: int
    key: str
    venv: str
    groups: list[str]
    monitor: str = ""  # the edge's monitor page as a phone on the LAN opens it; "" = this host only
    _connection: Connection | None = field(default=None, repr=False)

    def connect(self) -> Connection:
        """This host's one connection (opened at the first command, kept for the task's others)."""
        if self._connection is None:
            kwargs = {"key_filename": self.key} if self.key else {}
            self._connection = Connection(
                self.address,
                user=self.user or None,
                port=self.port,
                connect_kwargs={**kwargs, "look_for_keys": not self.key, "allow_agent": not self.key},
                connect_timeout=10,
            )
        return self._connection


def ansible_inventory(path: Path) -> dict:
    """`ansible-inventory --list` of this inventory, as JSON."""
    exe = shutil.which("ansible-inventory") or str(Path(sys.executable).with_name("ansible-inventory"))
    if not Path(exe).exists() and not shutil.which(exe):
        raise Exit("ansible-inventory is missing: pip install -e '.[controller]' installs Ansible")
    if not Path(path).exists():
        raise Exit(f"cannot read the inventory {path}: no such file; pass --inventory PATH")
    r = subprocess.run(
        [exe, "-i", str(path), "--playbook-dir", str(ROOT / "ansible"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise Exit(f"ansible-inventory cannot read {path}:\n{r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def _plain(host: str, vars_: dict, key: str, default: str) -> str:
    value = str(vars_.get(key, default))
    if "{{" in value or "{%" in value:
        raise Exit(f"{host}: {key} = {value!r} is a template; fab needs a plain value there in the inventory")
    return value


def load_inventory(path: Path) -> dict[str, Host]:
    data = ansible_inventory(path)
    hostvars = data.get("_meta", {}).get("hostvars", {})

    def members(group: str, seen: frozenset = frozenset()) -> list[str]:
        body = data.get(group, {})
        found = list(body.get("hosts", []))
        for child in body.get("children", []):
            if child not in seen:
                found += members(child, seen | {group})
        return found

    groups: dict[str, list[str]] = {}
    for group in data:
        if group in ("_meta", "all"):
            continue
        for name in members(group):
            groups.setdefault(name, [])
            if group not in groups[name]:
                groups[name].append(group)

    def monitor_page(name: str, v: dict) -> str:
        """The monitor's address with its token (lalelu_monitor_token opens the page to the LAN)."""
        token = v.get("lalelu_monitor_token", "")
        if not token or "edge" not in groups.get(name, []):
            return ""
        shown = token if isinstance(token, str) and "{{" not in token else "LALELU_MONITOR_TOKEN"  # vaulted
        port = _plain(name, v, "lalelu_app_monitor_port", "8700")
        return f"http://{_plain(name, v, 'ansible_host', name)}:{port}/?token={shown}"

    hosts: dict[str, Host] = {}
    for name in members("all") or list(hostvars):
        v = hostvars.get(name, {})
        hosts[name] = Host(
            name,
            _plain(name, v, "ansible_host", name),
            _plain(name, v, "ansible_user", ""),
            int(_plain(name, v, "ansible_port", "22")),
            _plain(name, v, "ansible_ssh_private_key_file", ""),
            _plain(name, v, "lalelu_venv", DEFAULT_VENV),
            groups.get(name, []),
            monitor_page(name, v),
        )
    return hosts


def select(inventory: str, group: str, hosts: str) -> list[Host]:
    known = load_inventory(Path(inventory) if inventory else DEFAULT_INVENTORY)
    if hosts:
        by_address = {h.address: h for h in known.values()}
        names = [h for h in hosts.split(",") if h]
        missing = [h for h in names if h not in known and h not in by_address]
        if missing:
            raise Exit(
                f"host(s) {', '.join(missing)} not in the inventory; known: {', '.join(known) or 'none'}"
            )
        return [known[h] if h in known else by_address[h] for h in names]
    groups = group.split(",") if group != "all" else ["all"]
    chosen = [h for h in known.values() if "all" in groups or set(groups) & set(h.groups)]
    if not chosen:
        raise Exit(
            f"no host in group(s) {group}; groups in the inventory: "
            f"{', '.join(sorted({g for h in known.values() for g in h.groups}))}"
        )
    return chosen


def chosen_hosts(c, inventory: str, group: str, hosts: str) -> list[Host]:
    """The hosts a task serves: Fabric's -H (it then calls the task once per host, with a Connection),
    else --hosts, else --group; each looked up in the inventory, whose variables say how to reach it."""
    if isinstance(c, Connection):
        hosts = c.original_host
    return select(inventory, group, hosts)


R = TypeVar("R")


def each(hosts: list[Host], work: Callable[[Host], R]) -> list[tuple[Host, R | Exit]]:
    """`work` on every host at once (one thread each: SSH round trips overlap); the results, or the
    Exit that host ended with, in the hosts' order."""

    def attempt(host: Host) -> R | Exit:
        try:
            return work(host)
        except Exit as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        return list(zip(hosts, pool.map(attempt, hosts), strict=True))


def failed_line(host: Host, exc: Exit) -> str:
    message = str(exc.message or exc)
    return message if message.startswith(host.name) else f"{host.name}: {message}"


def remote(host: Host, command: str | list[str], hide: bool = True):
    """Run a command (an argument list is quoted word by word) over the host's one connection."""
    if isinstance(command, list):
        command = shlex.join(command)
    try:
        return host.connect().run(command, hide=hide, warn=True, in_stream=False)
    except (TimeoutError, OSError, SSHException) as exc:
        raise Exit(f"{host.name} ({host.user}@{host.address}:{host.port}) is unreachable: {exc}") from exc


def as_root(host: Host) -> list[str]:
    """`sudo -n` for a login user that is not root: the journal and /etc/lalelu are root's and the app's."""
    return [] if host.user == "root" else ["sudo", "-n"]


def lalelu(host: Host) -> str:
    return f"{host.venv}/bin/lalelu"


def check_venv(host: Host) -> None:
    r = remote(host, ["test", "-x", lalelu(host)])
    if r.exited != 0:
        raise Exit(
            f"{host.name}: no lalelu in {host.venv}; deploy it (ansible-playbook site.yml --tags app) "
            "or set lalelu_venv in the inventory"
        )


def live_line(host: Host) -> str:
    """The running service's own figures, from the state file it rewrites (what `lalelu check` reads): an
    edge's rate and latency, a backend's edges and frames per engine call."""
    from lalelu.runtime.state import SERVICE_BACKEND_STATE, SERVICE_STATE, band_line, status_line

    backend = "edge" not in host.groups
    # the app's files are 0640 (its unit's UMask): read as root, as `lalelu check` does
    r = remote(host, [*as_root(host), "cat", str(SERVICE_BACKEND_STATE if backend else SERVICE_STATE)])
    if r.exited != 0:
        return "no live figures: the service is not running or has not reported yet"
    try:
        state = json.loads(r.stdout)
        return band_line(state) if backend else status_line(state)
    except (ValueError, KeyError, TypeError) as exc:
        return f"live figures unreadable ({exc}): an older lalelu on the host?"


COMMON_HELP = {
    "group": "inventory group(s), comma-separated: backend, edge or all",
    "hosts": "comma-separated inventory names or addresses instead of a group (or fab -H)",
    "inventory": "Ansible inventory (default ansible/inventory/hosts.yml)",
}


def _report(results: list[tuple[Host, R | Exit]], show: Callable[[Host, R], None], failure: str) -> None:
    """Print each host's result in order (a failed host: one line); then exit 1 naming the failed hosts
    after `failure`, if any."""
    failed = []
    for host, got in results:
        if isinstance(got, Exit):
            print(failed_line(host, got), flush=True)
            failed.append(host.name)
        else:
            show(host, got)
    if failed:
        raise Exit(f"{failure}: {', '.join(failed)}", code=1)


@task(
    auto_shortflags=False,
    help={
        **COMMON_HELP,
        "configs": "bench configurations, comma-separated",
        "threads": "thread counts, e.g. 1,2",
        "count": "timed inferences per configuration",
        "warmup": "warm-up inferences",
        "cpu": "core of the pinned configurations",
        "results": "results folder (a timestamped folder per run inside it)",
    },
)
def bench(
    c,
    group="backend",
    hosts="",
    configs="plain,pinned,pinned+fifo",
    threads="2",
    count=500,
    warmup=50,
    cpu=1,
    inventory="",
    results="results",
):
    """Run `lalelu bench` on the chosen hosts, fetch the JSON, print one table, keep results and plots; then
    each host's live figures as its service reports them (a backend: the edges it serves, its batches)."""
    from lalelu.cli.bench import format_table

    out_dir = Path(results) / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = chosen_hosts(c, inventory, group, hosts)

    def run(host: Host) -> tuple[dict, str]:
        check_venv(host)
        remote_json = f"/tmp/lalelu-bench-{int(time.time())}.json"
        argv = [lalelu(host), "bench", "--configs", str(configs), "--threads", str(threads)]
        argv += ["--n", str(int(count)), "--warmup", str(int(warmup)), "--cpus", str(int(cpu))]
        r = remote(host, [*argv, "--json", remote_json, "--quiet"])
        if r.exited != 0:
            raise Exit(f"{host.name}: lalelu bench failed:\n{r.stderr[-2000:]}")
        local = out_dir / f"{host.name}.json"
        try:
            host.connect().get(remote_json, str(local))
        except (OSError, SSHException) as exc:
            raise Exit(
                f"{host.name}: cannot fetch {remote_json} over SFTP ({exc}); is sftp enabled in sshd?"
            ) from exc
        report = json.loads(local.read_text())
        for res in report["results"]:
            res["host"] = host.name
        return report, live_line(host)

    results_ = each(chosen, run)
    combined = [got[0] for _, got in results_ if not isinstance(got, Exit)]
    for report in combined:
        try:
            from lalelu.cli.plots import plot_bench

            plot_bench(report, out_dir / report["results"][0]["host"])
        except Exception as exc:  # plots are a bonus: a controller without matplotlib still gets the table
            print(f"(no plots for {report['results'][0]['host']}: {exc})")
    if combined:
        print(f"{'host':<16} " + format_table({"results": []}).splitlines()[0])
        for report in combined:
            for line in format_table(report).splitlines()[2:-1]:
                print(f"{report['results'][0]['host']:<16} {line}")
        (out_dir / "combined.json").write_text(json.dumps(combined))
    width = max(len(h.name) for h in chosen)
    print(f"results in {out_dir}")
    print("live, as each service reports it:")
    _report(results_, lambda host, got: print(f"{host.name:<{width}}  {got[1]}"), "no bench from")


@task(
    auto_shortflags=False,
    help={
        "source": "model path on the backend (/opt/lalelu/models/NAME.onnx)",
        "to": "what to build: tensorrt (ONNX is made on the controller by site.yml)",
        "fp16": "half precision",
        "hosts": COMMON_HELP["hosts"],
        "inventory": COMMON_HELP["inventory"],
    },
)
def convert(c, source, to="tensorrt", fp16=False, inventory="", hosts=""):
    """Run `lalelu convert` on the backend: a TensorRT engine from the ONNX model site.yml copied there
    (source: /opt/lalelu/models/NAME.onnx). ONNX itself is made on the controller (site.yml does it)."""
    if to != "tensorrt":
        raise Exit(
            f"fab convert --to {to}: the backend has no converter (tf2onnx is the controller's convert extra); "
            "site.yml converts the model to ONNX on the controller and copies it, or run `lalelu convert` here"
        )

    def run(host: Host) -> str:
        check_venv(host)
        fp16_flag = ["--fp16"] if fp16 else []
        r = remote(host, [lalelu(host), "convert", str(source), "--to", str(to), *fp16_flag])
        if r.exited != 0:
            raise Exit(f"{host.name}: lalelu convert failed:\n{r.stderr[-2000:]}")
        return r.stdout

    _report(
        each(chosen_hosts(c, inventory, "backend", hosts), run),
        lambda h, out: print(f"== {h.name}\n{out}"),
        "no engine built on",
    )


STATUS = {
    "service": "systemctl is-active lalelu-edge lalelu-backend 2>/dev/null | paste -sd' '",
    "isolated": "cat /sys/devices/system/cpu/isolated",
    "governor": "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo n/a",
    "throttled": "vcgencmd get_throttled 2>/dev/null || echo n/a",
    "temperature": "vcgencmd measure_temp 2>/dev/null || echo n/a",
    "gpu": "nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,pstate,power.draw --format=csv,noheader "
    "2>/dev/null || echo n/a",
}


@task(auto_shortflags=False, help=COMMON_HELP)
def status(c, group="all", hosts="", inventory=""):
    """Service state, isolated CPUs, governor, Pi throttling/temperature, GPU clocks and power state."""

    def run(host: Host) -> list[str]:
        return [f"  {key:<12} {remote(host, cmd).stdout.strip()}" for key, cmd in STATUS.items()]

    def show(host: Host, lines: list[str]) -> None:
        print(f"== {host.name} ({host.address})", *lines, sep="\n")

    _report(each(chosen_hosts(c, inventory, group, hosts), run), show, "unreachable")


@task(
    name="play-test",
    auto_shortflags=False,
    help={
        "hosts": "comma-separated inventory names or addresses instead of every edge (or fab -H)",
        "inventory": COMMON_HELP["inventory"],
        "wait": "seconds to wait for each edge's note (it plays at its next pose)",
    },
)
def play_test(c, hosts="", inventory="", wait=10.0):
    """One note through each edge's output (a sound check without playing): SIGUSR1 to the running
    lalelu-edge, then its journal's word that the note went out. Exit 1 unless every edge played it."""

    def run(host: Host) -> str:
        root = as_root(host)
        shown = remote(
            host, ["systemctl", "show", "-p", "MainPID", "-p", "ActiveState", "--value", "lalelu-edge"]
        ).stdout.split()
        pid, state = [*shown, "", ""][:2]
        if state != "active" or not pid.isdigit() or pid == "0":  # a starting edge is left alone
            raise Exit(
                f"{host.name}: lalelu-edge is not playing ({state or 'unknown'}): see fab status and fab logs"
            )
        since = remote(host, ["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()
        sent = remote(host, [*root, "kill", "-USR1", pid])
        if sent.exited != 0:
            raise Exit(f"{host.name}: could not signal lalelu-edge: {sent.stderr.strip() or 'kill failed'}")
        line = ""
        deadline = time.monotonic() + float(wait)
        while not line and time.monotonic() < deadline:
            time.sleep(0.5)
            journal = remote(
                host, [*root, "journalctl", "-u", "lalelu-edge", "--since", since, "-o", "cat", "--no-pager"]
            ).stdout
            line = next((ln for ln in journal.splitlines() if "test note" in ln and "played" in ln), "")
            line = line or next((ln for ln in journal.splitlines() if "SIGUSR1:" in ln), "")
        if "test note played" not in line:
            raise Exit(
                f"{host.name}: no test note within {float(wait):g} s ({line or 'no pose reached the player?'}); see fab logs"
            )
        return line.split(": ", 1)[-1]

    _report(
        each(chosen_hosts(c, inventory, "edge", hosts), run),
        lambda host, said: print(f"{host.name}: {said}"),
        "no test note from",
    )


@task(auto_shortflags=False, help={**COMMON_HELP, "lines": "journal lines per host"})
def logs(c, group="all", hosts="", inventory="", lines=100):
    """The services' journal."""
    argv = ["journalctl", "-u", "lalelu-edge", "-u", "lalelu-backend", "-n", str(int(lines)), "--no-pager"]
    _report(
        each(
            chosen_hosts(c, inventory, group, hosts),
            lambda host: remote(host, [*as_root(host), *argv]).stdout,
        ),
        lambda host, journal: print(f"== {host.name}\n{journal}"),
        "unreachable",
    )


@task(
    auto_shortflags=False,
    help={
        **COMMON_HELP,
        "config": "configuration path on the hosts (default /etc/lalelu/<role>.toml, as Ansible writes it)",
        "max_p99_ms": "the live latency's p99 limit in ms",
        "min_fps_ratio": "the share of the configured camera rate that counts as ready",
        "frames": "frames of the live latency measurement",
    },
)
def check(c, group="all", hosts="", inventory="", config="", max_p99_ms=50.0, min_fps_ratio=0.9, frames=50):
    """`lalelu check` on every host: each host's go/no-go table, then one line per host; exit 1 unless all are ready."""

    def role_of(host: Host) -> str:
        return "edge" if "edge" in host.groups else "backend"

    def run(host: Host) -> tuple[str, str]:
        role = role_of(host)
        check_venv(host)
        argv = [*as_root(host), lalelu(host), "check", "--role", role]
        argv += ["--config", config or f"/etc/lalelu/{role}.toml", "--frames", str(int(frames))]
        argv += ["--max-p99-ms", str(float(max_p99_ms)), "--min-fps-ratio", str(float(min_fps_ratio))]
        r = remote(host, argv)
        verdict = {0: "READY", 1: "NOT READY"}.get(r.exited, f"ERROR (exit {r.exited})")
        return verdict, r.stdout + r.stderr

    verdicts: dict[str, str] = {}
    for host, got in each(chosen_hosts(c, inventory, group, hosts), run):
        print(f"== {host.name} ({host.address}, {role_of(host)})", flush=True)
        if isinstance(got, Exit):  # one host down must not hide the others' tables
            print(failed_line(host, got))
            verdicts[host.name] = "UNREACHABLE"
            continue
        verdicts[host.name], told = got
        print(told.rstrip("\n"))
        if role_of(host) == "edge":
            print(
                f"monitor page: {host.monitor} (open it on a phone on this network)"
                if host.monitor
                else "monitor page: on the Pi only (127.0.0.1:8700); set lalelu_monitor_token to open it to the LAN",
                flush=True,
            )
    width = max(len(n) for n in verdicts)
    print("\n".join(f"{name:<{width}}  {verdict}" for name, verdict in verdicts.items()))
    if any(v != "READY" for v in verdicts.values()):
        raise Exit("not ready: " + ", ".join(n for n, v in verdicts.items() if v != "READY"), code=1)
