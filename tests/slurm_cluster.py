"""A one-node SLURM cluster for the tests, started without systemd from Debian's packages.

Each pytest worker starts its own: a config folder under /tmp (SLURM_CONF), its own free ports, its
own state, spool and log folders, its own munge key and socket, and a private MariaDB for
accounting. The daemons run in the foreground as children of this process (munged as the `munge`
user, the rest as root) and are stopped by their pids. Accounting (slurmdbd on MariaDB) is what lets
`sacct`, and so submitit, learn that a job died; without it a dead job looks like one still
pending. Settings that need no cgroups: proctrack/linuxproc, task/affinity, select/cons_tres with
CR_Core, jobacct_gather/none.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = "slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
INSTALL = f"apt-get install -y {PACKAGES}"
PROGRAMS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
            "sbatch", "srun", "sacct", "scontrol", "sinfo", "squeue", "scancel")


def unavailable() -> str | None:
    """Why no cluster can start here (one line naming the fix), or None."""
    missing = [p for p in PROGRAMS if not which(p)]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing); install it with: {INSTALL}"
    if os.geteuid() != 0:
        return "the test cluster's slurmd runs jobs as their users and needs root; run the SLURM tests as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return f"no 'munge' user (the munge package creates it); reinstall with: {INSTALL}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def which(program: str) -> str:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin")


class SlurmCluster:
    """`start()` brings the node to idle, `stop()` ends every daemon; `env` runs SLURM's commands
    (and submitit) against this cluster."""

    def __init__(self, name: str | None = None):
        self.name = name or f"ts{secrets.token_hex(3)}"  # ClusterName: lower case, short
        self.root = Path(tempfile.mkdtemp(prefix=f"trashseg-slurm-{self.name}-"))
        self.root.chmod(0o755)  # munged, running as munge, reaches its folder through it
        self.daemons: list[tuple[str, subprocess.Popen]] = []
        self.node = socket.gethostname()
        self.ports = {key: free_port() for key in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"

    @property
    def env(self) -> dict:
        """The environment SLURM's commands and submitit run in to reach this cluster."""
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
        return env

    # ------------------------------------------------------------------ daemons

    def _spawn(self, name: str, command: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.console", "ab")
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=self.env, **kwargs)
        log.close()
        self.daemons.append((name, process))
        return process

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, process in self.daemons:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} while waiting for {what}:\n"
                                       + self.logs())
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n" + self.logs())
            time.sleep(0.2)

    def logs(self, tail: int = 15) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def start(self, timeout: float = 120) -> "SlurmCluster":
        for folder in ("etc", "log", "state", "spool", "mariadb", "run"):
            (self.root / folder).mkdir()
        try:
            self._start_munge(timeout)
            self._start_mariadb(timeout)
            self._write_configs()
            self._spawn("slurmdbd", [which("slurmdbd"), "-D"])  # reads slurmdbd.conf beside SLURM_CONF
            self._wait("slurmdbd", lambda: port_open(self.ports["slurmdbd"]), timeout)
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: port_open(self.ports["slurmctld"]), timeout)
            self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait("the node to be idle", self._idle, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self, timeout: float) -> None:
        munge = pwd.getpwnam("munge")
        folder, private = self.root / "munge", self.root / "munge" / "private"
        folder.mkdir(mode=0o755)  # clients must reach the socket in it
        private.mkdir(mode=0o700)
        key = private / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for path in (folder, private, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        self._spawn("munged", [which("munged"), "--foreground", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={folder / 'munged.pid'}",
                               f"--seed-file={private / 'munged.seed'}", f"--log-file={private / 'munged.log'}"],
                    user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
        self._wait("munged", self.munge_socket.exists, timeout)

    def _start_mariadb(self, timeout: float) -> None:
        data = self.root / "mariadb"
        install = subprocess.run([which("mariadb-install-db"), "--no-defaults", "--user=root", f"--datadir={data}",
                                  "--auth-root-authentication-method=normal", "--skip-test-db"],
                                 capture_output=True, text=True, timeout=timeout)
        if install.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{install.stdout[-2000:]}\n{install.stderr[-2000:]}")
        self._spawn("mariadbd", [which("mariadbd"), "--no-defaults", "--user=root", f"--datadir={data}",
                                 f"--socket={self.root / 'run' / 'mariadb.sock'}", f"--port={self.ports['mariadb']}",
                                 "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-name-resolve",
                                 f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
                                 "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M"])
        self._wait("mariadbd", lambda: port_open(self.ports["mariadb"]), timeout)

    def _node_line(self) -> str:
        """This machine's NodeName line as slurmd sees it (CPUs, sockets, cores, memory)."""
        found = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        fields = [f for f in found.splitlines()[0].split() if not f.startswith(("NodeName=", "UpTime="))]
        return f"NodeName={self.node} NodeAddr=127.0.0.1 " + " ".join(fields) + " State=UNKNOWN"

    def _write_configs(self) -> None:
        r, ports = self.root, self.ports
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(
            auth + f"DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={ports['slurmdbd']}\nSlurmUser=root\n"
            f"LogFile={r / 'log' / 'slurmdbd.log'}\nPidFile={r / 'run' / 'slurmdbd.pid'}\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={ports['mariadb']}\n"
            f"StorageUser=root\nStorageLoc=slurm_acct_db_{self.name}\n")
        dbd.chmod(0o600)
        self.conf.write_text(
            auth + "CredType=cred/munge\n"
            f"ClusterName={self.name}\nSlurmctldHost={self.node}(127.0.0.1)\n"
            f"SlurmctldPort={ports['slurmctld']}\nSlurmdPort={ports['slurmd']}\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={r / 'state'}\nSlurmdSpoolDir={r / 'spool'}\n"
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}\nSlurmdPidFile={r / 'run' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}\nSlurmdLogFile={r / 'log' / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/affinity\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
            "JobAcctGatherType=jobacct_gather/none\nJobCompType=jobcomp/none\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={ports['slurmdbd']}\nAccountingStoragePass={self.munge_socket}\n"
            "MpiDefault=none\nReturnToService=2\nSchedulerType=sched/builtin\n"
            # a requeued or cancelled job is gone in seconds, not the default half minute
            "KillWait=2\nSlurmdTimeout=60\nInactiveLimit=0\nMinJobAge=300\n"
            + self._node_line() + "\n"
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n")

    def _idle(self) -> bool:
        found = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env,
                               timeout=30)
        return found.stdout.strip() == "idle"

    def cancel_jobs(self, timeout: float = 30) -> None:
        """Cancel this cluster's jobs and wait until they are gone: a job step's processes live in
        slurmstepd, which outlives slurmd."""
        if not any(name == "slurmctld" and p.poll() is None for name, p in self.daemons):
            return
        subprocess.run(["scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name], env=self.env,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T"], capture_output=True, text=True,
                                  env=self.env, timeout=30).stdout.split()
            if not set(left[1::2]) & {"RUNNING", "COMPLETING", "PENDING", "CONFIGURING", "SUSPENDED", "REQUEUED"}:
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, then stop every daemon by its pid, the last started first (slurmctld takes
        over a second to exit)."""
        try:
            self.cancel_jobs()
        except (OSError, subprocess.SubprocessError):
            pass  # the daemons go below whatever the jobs do
        for name, process in reversed(self.daemons):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self.daemons.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ commands

    def command(self, *args: str, timeout: float = 60) -> str:
        """Run one of SLURM's commands against this cluster; its stdout, or an error with its output."""
        done = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout
