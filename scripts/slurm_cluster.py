#!/usr/bin/env python3
"""Start or stop a real single-node Slurm cluster (with accounting) in a private state directory.

What CI and the Slurm tests (tests/test_slurm.py) run against: Debian's packages (slurmctld,
slurmd, slurm-client, munge, slurmdbd, mariadb-server), no systemd, no cgroups, every daemon's
files (config, sockets, logs, pid files, database) under one directory::

    sudo apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server
    python3 scripts/slurm_cluster.py start         # prints: export SLURM_CONF=/tmp/lcdense-slurm/slurm.conf
    export SLURM_CONF=/tmp/lcdense-slurm/slurm.conf
    python -m pytest -q tests/test_slurm.py
    python3 scripts/slurm_cluster.py stop          # stops what start started, nothing else

``--dir`` (or ``LCDENSE_SLURM_DIR``) chooses the state directory (default /tmp/lcdense-slurm).
It needs root (munged runs as the ``munge`` user, mariadbd as ``mysql``, the Slurm daemons as
root). ``stop`` signals only the processes whose pid files ``start`` wrote, and only if they still
run the program ``start`` started. Where the packages are missing, or not root, ``start`` says so
in one line and exits 3; the tests that need a cluster then skip with that reason.

The accounting daemon matters: without it submitit never sees a cancelled job finish.
"""
from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROGRAMS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct", "sinfo")
PACKAGES = "slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
#: the daemons in start order (stop goes backwards): name → its program
DAEMONS = {"munged": "munged", "mariadbd": "mariadbd", "slurmdbd": "slurmdbd", "slurmctld": "slurmctld",
           "slurmd": "slurmd"}
CLUSTER = "lcdense"
UNAVAILABLE = 3


class Unavailable(Exception):
    """No cluster can be started here (one line, exit 3)."""


def default_dir() -> Path:
    return Path(os.environ.get("LCDENSE_SLURM_DIR", "/tmp/lcdense-slurm"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _alive(pid: int, program: str) -> bool:
    """Whether ``pid`` runs and is ``program`` (not a recycled pid; Debian's slurmctld is a link to slurmctld-wlm)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    path = _which(program)
    return path is not None and os.path.realpath(path) == os.path.realpath(exe) and state != "Z"


def _pid(state: Path, name: str) -> int | None:
    try:
        return int((state / "run" / f"{name}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait(what: str, check, seconds: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = f"; last log line: {_last_line(log)}" if log is not None else ""
    raise RuntimeError(f"{what} did not come up in {seconds:.0f} s{tail}")


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1] if lines else "(empty)"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}


def check_available() -> None:
    """Raise :class:`Unavailable` (one line) where a cluster cannot be started."""
    missing = [p for p in PROGRAMS if not _which(p)]
    if missing:
        raise Unavailable(f"no Slurm packages here (missing {', '.join(missing)}); "
                          f"install them with: apt-get install {PACKAGES}")
    if os.geteuid() != 0:
        raise Unavailable("starting the Slurm cluster needs root (munged runs as munge, mariadbd as mysql)")
    for user in ("munge", "mysql"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise Unavailable(f"no '{user}' user here; install the Debian packages: {PACKAGES}") from None


def _write_configs(state: Path, ports: dict[str, int], password: str) -> None:
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    node = " ".join(part for part in node.split() if not part.startswith("UpTime"))
    nodename = node.split()[0].split("=", 1)[1]
    munge_socket = state / "munge" / "munge.socket"
    common = {"AuthType": "auth/munge", "AuthInfo": f"socket={munge_socket}", "SlurmUser": "root"}
    slurm = {
        "ClusterName": CLUSTER, "SlurmctldHost": nodename, **common,
        "SlurmctldPort": ports["slurmctld"], "SlurmdPort": ports["slurmd"],
        "StateSaveLocation": state / "ctld", "SlurmdSpoolDir": state / "spool",
        "SlurmctldPidFile": state / "run" / "slurmctld.pid", "SlurmdPidFile": state / "run" / "slurmd.pid",
        "SlurmctldLogFile": state / "log" / "slurmctld.log", "SlurmdLogFile": state / "log" / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none", "JobAcctGatherType": "jobacct_gather/none",
        "SelectType": "select/cons_tres", "SelectTypeParameters": "CR_Core", "MpiDefault": "none",
        "ReturnToService": 2,
        # a plain scancel sends SIGTERM, which submitit ignores: the job runs on until SIGKILL, KillWait seconds later
        "KillWait": 1, "SchedulerParameters": "batch_sched_delay=0,sched_min_interval=0",
        "AccountingStorageType": "accounting_storage/slurmdbd", "AccountingStorageHost": "localhost",
        "AccountingStoragePort": ports["slurmdbd"], "AccountingStoragePass": munge_socket,  # munge's socket
        "JobCompType": "jobcomp/none", "MailProg": "/bin/true",
    }
    lines = [f"{k}={v}" for k, v in slurm.items()]
    lines += [node, f"PartitionName=debug Nodes={nodename} Default=YES MaxTime=INFINITE State=UP"]
    (state / "slurm.conf").write_text("\n".join(lines) + "\n")
    dbd = {
        **common, "DbdHost": "localhost", "DbdPort": ports["slurmdbd"], "PidFile": state / "run" / "slurmdbd.pid",
        "LogFile": state / "log" / "slurmdbd.log", "StorageType": "accounting_storage/mysql",
        "StorageHost": "127.0.0.1", "StoragePort": ports["mariadbd"], "StorageUser": "slurm",
        "StoragePass": password, "StorageLoc": "slurm_acct_db",
    }
    path = state / "slurmdbd.conf"
    path.write_text("\n".join(f"{k}={v}" for k, v in dbd.items()) + "\n")
    path.chmod(0o600)


def start(state: Path) -> None:
    """Start munged, mariadbd, slurmdbd, slurmctld and slurmd with their files under ``state``."""
    check_available()
    if any(_pid(state, name) and _alive(_pid(state, name), program) for name, program in DAEMONS.items()):
        raise RuntimeError(f"a cluster started from {state} still runs; stop it first: {sys.argv[0]} stop --dir {state}")
    for folder in state.resolve().parents:  # munged and mariadbd run as their own users: they must reach the state
        if folder.exists() and not folder.stat().st_mode & 0o001:
            raise RuntimeError(f"{folder} is closed to other users (mode {folder.stat().st_mode & 0o777:o}), so munged and "
                               f"mariadbd cannot reach {state}: chmod o+x {folder}, or choose another --dir")
    if state.exists():
        shutil.rmtree(state)
    for sub in ("run", "log", "ctld", "spool", "munge", "mysql"):
        (state / sub).mkdir(parents=True)
    state.chmod(0o755)
    for path in (Path("/run/munge"), Path("/run/mysqld")):  # the programs' default run folders
        path.mkdir(exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    shutil.chown("/run/mysqld", "mysql", "mysql")
    ports = {name: _free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadbd")}
    password = secrets.token_hex(12)
    _write_configs(state, ports, password)
    env = _env(state)

    munge = state / "munge"
    key = munge / "munge.key"
    key.write_bytes(secrets.token_bytes(128))
    for path in (munge, key):
        shutil.chown(path, "munge", "munge")
    key.chmod(0o400)
    munge.chmod(0o755)
    for name in ("munged.log", "munged.pid"):
        (state / ("log" if name.endswith("log") else "run") / name).touch()
        shutil.chown(state / ("log" if name.endswith("log") else "run") / name, "munge", "munge")
    _run(["runuser", "-u", "munge", "--", "munged", f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
          f"--pid-file={state / 'run' / 'munged.pid'}", f"--log-file={state / 'log' / 'munged.log'}",
          f"--seed-file={munge / 'munged.seed'}"])
    _wait("munged", lambda: (munge / "munge.socket").exists(), 15, state / "log" / "munged.log")

    data = state / "mysql"
    shutil.chown(data, "mysql", "mysql")
    _run(["mariadb-install-db", f"--datadir={data}", "--user=mysql", "--skip-test-db",
          "--auth-root-authentication-method=socket"])
    sql_socket = data / "mysqld.sock"
    log = state / "log" / "mariadbd.log"
    for path in (log, state / "run" / "mariadbd.pid"):
        path.touch()
        shutil.chown(path, "mysql", "mysql")
    with open(os.devnull, "wb") as null:
        server = subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={data}", "--user=mysql", f"--socket={sql_socket}",
                          f"--port={ports['mariadbd']}", "--bind-address=127.0.0.1", f"--log-error={log}",
                          f"--pid-file={state / 'run' / 'mariadbd.pid'}", "--skip-name-resolve"],
                         stdout=null, stderr=null, stdin=null, start_new_session=True)
    _wait("mariadbd", lambda: sql_socket.exists() or server.poll() is not None, 60, log)
    if server.poll() is not None:
        raise RuntimeError(f"mariadbd exited with {server.returncode}: {_last_line(log)}")
    grant = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
             "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
    _run(["mariadb", f"--socket={sql_socket}", "-u", "root", "-e", grant])

    _run(["slurmdbd"], env=env)
    _wait("slurmdbd", lambda: _port_open(ports["slurmdbd"]), 30, state / "log" / "slurmdbd.log")
    _run(["slurmctld"], env=env)
    _wait("slurmctld", lambda: _port_open(ports["slurmctld"]), 30, state / "log" / "slurmctld.log")
    _run(["slurmd"], env=env)

    def idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout.split()
        return out == ["idle"]

    _wait("the node (sinfo state idle)", idle, 60, state / "log" / "slurmd.log")
    _wait("the accounting (sacct)", lambda: subprocess.run(["sacct", "-n", "-X"], capture_output=True,
                                                            env=env).returncode == 0, 30)
    (state / "env.sh").write_text(f"export SLURM_CONF={state / 'slurm.conf'}\n")


def stop(state: Path) -> list[str]:
    """Cancel the cluster's jobs, then stop the daemons ``start`` started (newest first); returns what was stopped."""
    env = _env(state)
    stopped = []
    slurmctld = _pid(state, "slurmctld")
    if slurmctld and _alive(slurmctld, "slurmctld"):
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, env=env, timeout=30)
    for name, program in reversed(DAEMONS.items()):
        pid = _pid(state, name)
        if not pid or not _alive(pid, program):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid, program) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid, program):
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"{name} ({pid})")
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "check"))
    parser.add_argument("--dir", type=Path, default=default_dir(), help="the state directory (default %(default)s)")
    args = parser.parse_args(argv)
    state = args.dir.resolve()
    try:
        if args.action == "check":
            check_available()
            print("slurm_cluster: the packages are here; start a cluster with: scripts/slurm_cluster.py start")
        elif args.action == "start":
            began = time.monotonic()
            start(state)
            print(f"slurm_cluster: a single-node cluster runs from {state} (up in {time.monotonic() - began:.0f} s); "
                  f"use it with: export SLURM_CONF={state / 'slurm.conf'}")
        else:
            stopped = stop(state)
            print(f"slurm_cluster: stopped {', '.join(stopped) if stopped else 'nothing (none of its daemons ran)'}")
        return 0
    except Unavailable as exc:
        print(f"slurm_cluster: {exc}", file=sys.stderr)
        return UNAVAILABLE
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip().splitlines()[-1] if isinstance(exc, subprocess.CalledProcessError) and exc.stderr \
            else str(exc)
        print(f"slurm_cluster: {args.action} failed: {detail} (logs: {state / 'log'})", file=sys.stderr)
        if args.action == "start":
            stop(state)
        return 1


if __name__ == "__main__":
    sys.exit(main())
