"""Remote tasks over the Ansible inventory (Fabric 3): `fab bench`, `fab convert`, `fab status`, `fab logs`.

Hosts, users, ports and keys come from the Ansible inventory (`ansible/inventory/hosts.yml`, or
`--inventory`), never from a second host list. The project is expected in the virtualenv named by the
inventory variable `lalelu_venv` (where the Ansible app role installs it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from fabric import Connection, task
from invoke.exceptions import Exit
from paramiko.ssh_exception import SSHException

ROOT = Path(__file__).resolve().parent
DEFAULT_INVENTORY = ROOT / "ansible" / "inventory" / "hosts.yml"


@dataclass
class Host:
    name: str
    address: str
    user: str
    port: int
    key: str
    venv: str
    groups: list[str]

    def connect(self) -> Connection:
        kwargs = {"key_filename": self.key} if self.key else {}
        return Connection(
            self.address,
            user=self.user or None,
            port=self.port,
            connect_kwargs={**kwargs, "look_for_keys": not self.key, "allow_agent": not self.key},
            connect_timeout=10,
        )


def load_inventory(path: Path) -> dict[str, Host]:
    """Ansible's YAML inventory: groups with hosts, children and vars; host vars override group vars."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise Exit(f"cannot read the inventory {path}: {exc.strerror}; pass --inventory PATH") from exc
    hosts: dict[str, Host] = {}

    def walk(group: str, body: dict, inherited: dict) -> None:
        body = body or {}
        vars_ = {**inherited, **(body.get("vars") or {})}
        for name, hvars in (body.get("hosts") or {}).items():
            v = {**vars_, **(hvars or {})}
            h = hosts.get(name)
            if h is None:
                hosts[name] = Host(
                    name,
                    str(v.get("ansible_host", name)),
                    str(v.get("ansible_user", "")),
                    int(v.get("ansible_port", 22)),
                    str(v.get("ansible_ssh_private_key_file", "")),
                    str(v.get("lalelu_venv", "/opt/lalelu/venv")),
                    [group],
                )
            else:
                h.groups.append(group)
        for child, cbody in (body.get("children") or {}).items():
            walk(child, cbody, vars_)

    for group, body in data.items():
        walk(group, body, {})
    return hosts


def select(inventory: str, group: str, hosts: str) -> list[Host]:
    known = load_inventory(Path(inventory) if inventory else DEFAULT_INVENTORY)
    if hosts:
        missing = [h for h in hosts.split(",") if h not in known]
        if missing:
            raise Exit(
                f"host(s) {', '.join(missing)} not in the inventory; known: {', '.join(known) or 'none'}"
            )
        return [known[h] for h in hosts.split(",")]
    groups = group.split(",") if group != "all" else ["all"]
    chosen = [h for h in known.values() if "all" in groups or set(groups) & set(h.groups)]
    if not chosen:
        raise Exit(
            f"no host in group(s) {group}; groups in the inventory: "
            f"{', '.join(sorted({g for h in known.values() for g in h.groups}))}"
        )
    return chosen


def remote(host: Host, command: str, hide: bool = True):
    try:
        return host.connect().run(command, hide=hide, warn=True, in_stream=False)
    except (TimeoutError, OSError, SSHException) as exc:
        raise Exit(f"{host.name} ({host.user}@{host.address}:{host.port}) is unreachable: {exc}") from exc


def lalelu(host: Host) -> str:
    return f"{host.venv}/bin/lalelu"


def check_venv(host: Host) -> None:
    r = remote(host, f"test -x {lalelu(host)}")
    if r.exited != 0:
        raise Exit(
            f"{host.name}: no lalelu in {host.venv}; deploy it (ansible-playbook site.yml --tags app) "
            "or set lalelu_venv in the inventory"
        )


@task(
    help={
        "group": "backend, edge or all",
        "hosts": "comma-separated inventory names instead of a group",
        "configs": "bench configurations",
        "threads": "thread counts, e.g. 1,2",
        "count": "timed inferences",
        "warmup": "warm-up inferences",
        "cpu": "core of the pinned configurations",
        "inventory": "Ansible inventory (default ansible/inventory/hosts.yml)",
        "results": "results folder",
    }
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
    """Run `lalelu bench` on the chosen hosts, fetch the JSON, print one table, keep results and plots."""
    from lalelu.bench import format_table

    out_dir = Path(results) / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    combined = []
    for host in select(inventory, group, hosts):
        check_venv(host)
        remote_json = f"/tmp/lalelu-bench-{int(time.time())}.json"
        r = remote(
            host,
            f"{lalelu(host)} bench --configs {configs} --threads {threads} --n {count} --warmup {warmup} "
            f"--cpu-affinity {cpu} --json {remote_json} --quiet",
        )
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
        combined.append(report)
        try:
            from lalelu.plots import plot_bench

            plot_bench(report, out_dir / host.name)
        except Exit:
            raise
        except Exception as exc:  # plots are a bonus: a controller without matplotlib still gets the table
            print(f"(no plots for {host.name}: {exc})")
    print(f"{'host':<16} " + format_table({"results": []}).splitlines()[0])
    for report in combined:
        for line in format_table(report).splitlines()[2:-1]:
            print(f"{report['results'][0]['host']:<16} {line}")
    (out_dir / "combined.json").write_text(json.dumps(combined))
    print(f"results in {out_dir}")


@task(
    help={"source": "model path on the backend", "to": "onnx, tensorrt or tf-trt", "fp16": "half precision"}
)
def convert(c, source, to="tensorrt", fp16=False, inventory="", hosts=""):
    """Run `lalelu convert` on the backend."""
    for host in select(inventory, "backend", hosts):
        check_venv(host)
        r = remote(host, f"{lalelu(host)} convert {source} --to {to}{' --fp16' if fp16 else ''}", hide=False)
        if r.exited != 0:
            raise Exit(f"{host.name}: lalelu convert failed")


STATUS = {
    "service": "systemctl is-active lalelu-edge lalelu-backend 2>/dev/null | paste -sd' '",
    "isolated": "cat /sys/devices/system/cpu/isolated",
    "governor": "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo n/a",
    "throttled": "vcgencmd get_throttled 2>/dev/null || echo n/a",
    "temperature": "vcgencmd measure_temp 2>/dev/null || echo n/a",
    "gpu": "nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,pstate,power.draw --format=csv,noheader "
    "2>/dev/null || echo n/a",
}


@task
def status(c, group="all", hosts="", inventory=""):
    """Service state, isolated CPUs, governor, Pi throttling/temperature, GPU clocks and power state."""
    for host in select(inventory, group, hosts):
        print(f"== {host.name} ({host.address})")
        for key, cmd in STATUS.items():
            print(f"  {key:<12} {remote(host, cmd).stdout.strip()}")


@task
def logs(c, group="all", hosts="", inventory="", lines=100):
    """The services' journal."""
    for host in select(inventory, group, hosts):
        print(f"== {host.name}")
        print(remote(host, f"journalctl -u lalelu-edge -u lalelu-backend -n {lines} --no-pager").stdout)


@task(
    help={
        "group": "backend, edge or all",
        "hosts": "comma-separated inventory names instead of a group",
        "config": "configuration path on the hosts (default /etc/lalelu/<role>.toml, as Ansible writes it)",
        "max_p99_ms": "the live latency's p99 limit",
        "frames": "frames of the live latency measurement",
        "inventory": "Ansible inventory (default ansible/inventory/hosts.yml)",
    }
)
def check(c, group="all", hosts="", inventory="", config="", max_p99_ms=50.0, frames=50):
    """`lalelu check` on every host: each host's go/no-go table, then one line per host; exit 1 unless all are ready."""
    verdicts: dict[str, str] = {}
    for host in select(inventory, group, hosts):
        role = "edge" if "edge" in host.groups else "backend"
        print(f"== {host.name} ({host.address}, {role})", flush=True)
        try:
            check_venv(host)
            r = remote(
                host,
                f"{lalelu(host)} check --role {role} --config {config or f'/etc/lalelu/{role}.toml'} "
                f"--frames {int(frames)} --max-p99-ms {float(max_p99_ms)}",
                hide=False,
            )
        except Exit as exc:  # one host down must not hide the others' tables
            print(exc.message)
            verdicts[host.name] = "UNREACHABLE"
            continue
        verdicts[host.name] = {0: "READY", 1: "NOT READY"}.get(r.exited, f"ERROR (exit {r.exited})")
    width = max(len(n) for n in verdicts)
    print("\n".join(f"{name:<{width}}  {verdict}" for name, verdict in verdicts.items()))
    if any(v != "READY" for v in verdicts.values()):
        raise Exit("not ready: " + ", ".join(n for n, v in verdicts.items() if v != "READY"), code=1)
