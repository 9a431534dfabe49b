"""Real Redis Sentinel and Redis Cluster set-ups made of redis-server processes.

Everything lives in a temporary directory (configs the sentinels rewrite, logs, the
replica's sync file, nodes.conf, and the append-only files of ``ClusterSetup(persist=True)``);
nothing is written elsewhere and no snapshot is saved (``--save ""``). Ports are free
ports; the cluster bus port is set explicitly (``--cluster-port``) so it never falls
outside the port range.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import Proc, RedisServer, free_port

SERVICE = "mymaster"


def cli(port: int, *args: str, password: str | None = None, timeout: float = 10) -> str:
    env = {**os.environ, "REDISCLI_AUTH": password} if password else None
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        env=env,
    )
    return result.stdout


def info(port: int, section: str, password: str | None = None) -> dict[str, str]:
    lines = cli(port, "INFO", section, password=password).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(step)
    raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


def _node(directory: Path, *extra: str, password: str | None = None) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    # No 5 s wait for more replicas before a diskless full sync (the default).
    server = RedisServer(extra=["--dir", str(directory), "--repl-diskless-sync-delay", "0", *auth, *extra])
    server.log = directory / "redis.log"
    return server


class SentinelSetup:
    """One master, one replica, three sentinels (quorum 2) watching service ``mymaster``.

    ``password``: the data nodes want it; ``sentinel_password``: the sentinels want it.
    """

    def __init__(
        self,
        tmp: Path,
        down_after_ms: int = 5000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.tmp = tmp
        self.password = password
        self.sentinel_password = sentinel_password
        self.master = _node(tmp / "master", password=password)
        self.replica = _node(
            tmp / "replica", "--replicaof", "127.0.0.1", str(self.master.port), password=password
        )
        self.servers = [self.master, self.replica]
        self.sentinels: list[Proc] = []
        binary = shutil.which("redis-server") or "redis-server"
        for i in range(3):
            port = free_port()
            directory = tmp / f"sentinel-{i}"
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"  # sentinel rewrites it: it must be its own file
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f'dir "{directory}"\n'
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                + (f"sentinel auth-pass {SERVICE} {password}\n" if password else "")
                + (
                    f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
                    if sentinel_password
                    else ""
                )
            )
            self.sentinels.append(
                Proc([binary, str(conf), "--sentinel"], port, log=directory / "sentinel.log")
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0{query}"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        self.wait_replicated()
        for s in self.sentinels:  # started after the replica is linked: their first INFO lists it
            s.start()
        wait_for(self._sentinels_agree, "the sentinels to know the master, the replica and each other")

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            state = self.sentinel_master(s.port)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def stop(self) -> None:
        for p in [*self.sentinels, *self.servers]:
            p.stop()

    # --- inspection -----------------------------------------------------------------
    def sentinel_master(self, port: int) -> dict[str, str]:
        flat = self.sentinel_cli(port, "SENTINEL", "MASTER", SERVICE).split()
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def sentinel_cli(self, port: int, *args: str) -> str:
        return cli(port, *args, password=self.sentinel_password)

    def node_cli(self, port: int, *args: str) -> str:
        return cli(port, *args, password=self.password)

    def master_port(self, sentinel: int = 0) -> int:
        out = self.sentinel_cli(self.sentinels[sentinel].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(out.split()[1])

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def role(self, port: int) -> str:
        return info(port, "replication", self.password)["role"]

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Until every running replica is linked to its master and has all its writes."""

        def synced() -> bool:
            master = self.master_port() if self.sentinels[0].proc else self.master.port
            replicas = [s for s in self.servers if s.port != master and s.proc and s.proc.poll() is None]
            for r in replicas:
                if info(r.port, "replication", self.password).get("master_link_status") != "up":
                    return False
            # WAIT: every replica acknowledged every write made on the master so far.
            return int(self.node_cli(master, "WAIT", str(len(replicas)), "1000").strip()) >= len(replicas)

        wait_for(synced, "replication to the replica", timeout)

    def flush(self) -> None:
        self.node_cli(self.master_port(), "FLUSHALL")

    # --- failover -------------------------------------------------------------------
    def failover(self) -> None:
        """Ask a sentinel to promote the replica now (the old master is demoted)."""
        out = self.sentinel_cli(self.sentinels[0].port, "SENTINEL", "FAILOVER", SERVICE)
        assert out.strip() == "OK", out

    def wait_new_master(self, old: int, timeout: float = 30.0) -> int:
        """Until every sentinel names a master other than ``old`` and it answers as master."""

        def switched() -> bool:
            ports = {self.master_port(i) for i in range(len(self.sentinels))}
            if len(ports) != 1 or old in ports:
                return False
            return self.role(ports.pop()) == "master"

        wait_for(switched, "the sentinels to switch to a new master", timeout)
        return self.master_port()


class ClusterSetup:
    """A Redis Cluster of three masters (no replicas) built with ``redis-cli --cluster create``."""

    def __init__(
        self, tmp: Path, node_timeout_ms: int = 5000, persist: bool = False, password: str | None = None
    ) -> None:
        # persist: an append-only file in the node's tmp dir, so a killed node restarts
        # with its keys (for tests that stop and start a node).
        keep = ["--appendonly", "yes", "--appendfsync", "always"] if persist else []
        self.password = password
        self.nodes = [
            _node(
                tmp / f"node-{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                *keep,
                password=password,
            )
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for n in self.nodes:
            n.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={**os.environ, "REDISCLI_AUTH": self.password} if self.password else None,
        )

        self.wait_state("ok")

    def wait_state(self, state: str, timeout: float = 30.0) -> None:
        """Until every running node says ``cluster_state:<state>`` (and, for ok, covers all slots)."""

        def reached() -> bool:
            for n in self.nodes:
                if n.proc is None or n.proc.poll() is not None:
                    continue
                got = info_cluster(n.port, self.password)
                if got["cluster_state"] != state:
                    return False
                if state == "ok" and (
                    got["cluster_slots_ok"] != "16384" or got["cluster_known_nodes"] != "3"
                ):
                    return False
            return True

        wait_for(reached, f"cluster_state:{state} on every running node", timeout)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def flush(self) -> None:
        for n in self.nodes:
            cli(n.port, "FLUSHALL", password=self.password)

    def keys(self, pattern: str = "*") -> dict[int, list[str]]:
        """The keys each node holds (port -> keys)."""
        return {n.port: cli(n.port, "KEYS", pattern, password=self.password).split() for n in self.nodes}


def info_cluster(port: int, password: str | None = None) -> dict[str, str]:
    lines = cli(port, "CLUSTER", "INFO", password=password).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)
