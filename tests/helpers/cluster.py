"""A local multi-node Ray cluster of a test's own (``ray start --head`` + ``ray start --address``, token auth
on, its own ports and temp dirs), stopped by signalling its ``ray start --block`` processes (never ``ray
stop``, which would kill every Ray on the machine, including the pytest session's own), and jobs submitted
to it as docs/cluster.md tells users to."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers.datasets import REPO_ROOT
from helpers.redis import Redis

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy
BIN = Path(sys.executable).parent  # the test's interpreter's scripts: `ray`, `serve`, `python`

def _ray_cli() -> Path:
    candidate = BIN / "ray"
    return candidate if candidate.exists() else Path(shutil.which("ray") or "ray")


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports (held open together so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _processes_of(roots: list[str], sessions: set[int]) -> list[int]:
    """Our cluster's processes: started in one of our `ray start` sessions (Ray's daemons and
    workers), or running in / naming one of our temp dirs (job drivers start their own session)."""
    found = []
    if not Path("/proc").is_dir():  # not Linux: SIGTERM to `ray start --block` has to do
        return found
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            sid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3])
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if sid in sessions or any(cwd.startswith(root) or root in cmdline for root in roots):
            found.append(int(proc.name))
    return found


def _node_ports(ports: list[int]) -> list[str]:
    """Every port a node binds besides the head's own (two nodes on one machine must not collide)."""
    return [f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
            f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}"]


@dataclass
class LocalCluster:
    """A two-node Ray cluster on this machine with token authentication, as `ray start` builds one."""

    root: Path
    env: dict[str, str]  # the nodes' environment: token auth on
    gcs_port: int = 0
    dashboard_port: int = 0
    redis: Redis | None = None  # the GCS's external store (fault tolerance: the head can be lost and restarted)
    head_args: list[str] = field(default_factory=list)  # what the head was started with (restarted with the same)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> its `ray start --block`
    sessions: set[int] = field(default_factory=set)  # every session a `ray start` ran in (teardown kills them)
    lost: list[str] = field(default_factory=list)  # nodes killed by kill_node or kill_head
    worker_proxy_ports: dict[str, int] = field(default_factory=dict)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The Jobs API (and `serve deploy`) address: what `ray dashboard cluster.yaml` forwards."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token(self) -> str:
        return Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

    @property
    def client_env(self) -> dict[str, str]:
        """A user's shell, as docs/cluster.md sets it up: the token (RAY_AUTH_MODE=token; the
        token file), and the Jobs API / dashboard address for `ray job ...` and `serve ...`."""
        return {**self.env, "RAY_API_SERVER_ADDRESS": self.dashboard_url, "RAY_DASHBOARD_ADDRESS": self.dashboard_url}

    def cli(self, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run `ray ...` (or `serve ...`) as a user of this cluster would, from ``cwd`` (the repository)."""
        program = BIN / args[0] if (BIN / args[0]).exists() else Path(shutil.which(args[0]) or args[0])
        return subprocess.run([str(program), *args[1:]], env=self.client_env, cwd=cwd or REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def api(self, path: str, token: str | None = "cluster") -> tuple[int, object]:
        """GET the dashboard's REST API with the cluster's token (or another one, or none)."""
        request = urllib.request.Request(self.dashboard_url + path)
        if token:
            request.add_header("Authorization", f"Bearer {self.token if token == 'cluster' else token}")
        try:
            with _NO_PROXY.open(request, timeout=10) as response:
                body = response.read().decode()
                return response.status, json.loads(body) if body.strip()[:1] in "[{" else body
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except OSError as error:  # not listening yet, reset, timed out
            return 0, str(error)

    def alive_nodes(self) -> list[dict]:
        status, body = self.api("/api/v0/nodes?limit=100&detail=true")
        if status != 200 or not isinstance(body, dict):
            return []
        return [n for n in body["data"]["result"]["result"] if n.get("state") == "ALIVE"]

    def start(self, attempts: int = 2, head_cpus: int = 1, worker_cpus: int = 1) -> None:
        """Head (``head_cpus``) + one worker node (``worker_cpus``), each with every port it binds chosen here (two
        nodes on one machine must not collide) and its own --temp-dir (two nodes sharing one would share
        the runtime-env cache: one node re-extracting the job's working dir pulls it from under the other's
        running driver). On a loaded machine a node can die while starting (`ray start` gives its raylet
        30 s to register, the raylet gives its agents 20 s): then everything is stopped and started again."""
        for attempt in range(1, attempts + 1):
            self.gcs_port, self.dashboard_port, client, *ports = free_ports(9)
            self.head_args = ["--head", f"--port={self.gcs_port}", f"--ray-client-server-port={client}",
                              "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", *_node_ports(ports),
                              f"--num-cpus={head_cpus}", "--object-store-memory=100000000"]
            problem = (
                self._start_head(f"head-{attempt}")
                or self._start_worker(f"worker-{attempt}", cpus=worker_cpus)
            )
            if problem is None:
                return
            print(f"local cluster, attempt {attempt}: {problem}\n{self.logs()}")
            self.stop()
            self.processes.clear()
        pytest.fail(f"could not start the local cluster: {problem}\n{self.logs()}")

    def _start_head(self, name: str) -> str | None:
        """The head, with its GCS on ``redis`` where there is one (docs/cluster.md, "Head node loss"): the address
        and password, and a storage namespace that stays the same across restarts (the state to come back to)."""
        args, env = list(self.head_args), None
        if self.redis is not None:
            args.append(f"--redis-password={self.redis.password}")
            env = {**self.env, "RAY_REDIS_ADDRESS": self.redis.address,
                   "RAY_external_storage_namespace": self.root.name}
        return self._start_node(name, args, "the head's Jobs API", lambda: self.api("/api/jobs/")[0] == 200, env=env)

    def kill_head(self) -> float:
        """SIGKILL the head's whole process group (GCS, Serve controller, dashboard: a head machine lost at once);
        returns the time.monotonic() of the kill. Nothing is waited for: there is no GCS to ask."""
        name = next(n for n in self.processes if n.startswith("head"))
        killed_at = time.monotonic()
        self._kill_session(name)
        self.lost.append(name)
        return killed_at

    def _kill_session(self, name: str) -> None:
        """SIGKILL every process of node ``name``'s `ray start` session; it is no longer one of ours."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for pid in _processes_of([], {process.pid}):  # anything that left the group stays in the session
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)

    def restart_head(self, attempts: int = 3) -> int:
        """Start the head again on the same ports and Redis namespace, as a supervisor would (systemd's
        Restart=on-failure, KubeRay's pod restart): a start that fails is cleared away and tried again.
        Returns the number of starts it took. (On a busy machine the raylet can give up on its dashboard
        agent after a hard-coded 15 s, ray-project/ray#65983; a supervisor's next start succeeds.)"""
        problems = []
        for attempt in range(1, attempts + 1):
            name = f"head-r{len(self.lost)}" + (f"-{attempt}" if attempt > 1 else "")
            problem = self._start_head(name)
            if problem is None:
                return attempt
            problems.append(f"start {attempt}: {problem}")
            self._kill_session(name)
        pytest.fail(f"the head did not come back: {'; '.join(problems)}\n{self.logs()}")

    def renice(self, name: str, niceness: int) -> None:
        """Set the CPU niceness of node ``name``: its session's and each of its processes' (children it starts
        later inherit it). All nodes here share one machine's cores: a niced worker node lets the head's
        processes run first, as they would on a head machine of their own. Linux's autogroup scheduler
        shares the CPU between sessions before processes (each `ray start` here is one), so a process's
        niceness alone changes nothing against another node: the session's autogroup is niced too."""
        leader = self.processes[name].pid
        with contextlib.suppress(OSError):  # not Linux, or no autogroups (kernel.sched_autogroup_enabled=0)
            Path(f"/proc/{leader}/autogroup").write_text(str(niceness))
        for pid in _processes_of([], {leader}):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, niceness)

    def _start_worker(self, name: str, cpus: int) -> str | None:
        expected = len(self.alive_nodes()) + 1
        worker = [f"--address={self.gcs_address}", *_node_ports(free_ports(6)), f"--num-cpus={cpus}",
                  "--object-store-memory=100000000", f"--resources={json.dumps({f'node-{name}': 1})}"]
        # A worker node waits this long for a lost GCS to come back before it gives up (default 60 s); its Serve
        # proxy takes a port of its own (two proxies on one machine cannot share one; a node per machine can).
        env = {**self.env, "RAY_gcs_rpc_server_reconnect_timeout_s": "300",
               "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(self.proxy_port(name))}
        return self._start_node(name, worker, f"{expected} alive nodes", lambda: len(self.alive_nodes()) == expected,
                                env=env)

    def proxy_port(self, name: str) -> int:
        """The HTTP port of worker node ``name``'s Serve proxy (proxy_location EveryNode)."""
        if name not in self.worker_proxy_ports:
            self.worker_proxy_ports[name] = free_ports(1)[0]
        return self.worker_proxy_ports[name]

    def add_worker(self, cpus: int = 1) -> str:
        """Another worker node joins (what the autoscaler does after a node is lost); returns its name.
        Names stay short (w1, w2, ...): each is a --temp-dir, under which Ray's socket paths must fit."""
        name = f"w{sum(1 for n in self.processes if not n.startswith('head')) + len(self.lost) + 1}"
        problem = self._start_worker(name, cpus)
        if problem is not None:
            pytest.fail(f"worker node {name} did not join: {problem}\n{self.logs()}")
        return name

    def node_id(self, name: str) -> str:
        """The Ray node id of the node started as ``name`` (each node carries a resource named after it)."""
        for node in self.alive_nodes():
            if f"node-{name}" in (node.get("resources_total") or {}):
                return node["node_id"]
        pytest.fail(f"no alive node named {name}: {self.alive_nodes()}")

    def kill_node(self, name: str, timeout: float = 120) -> float:
        """SIGKILL the node's whole process group (`ray start --block`, its raylet, agents and workers:
        a machine lost at once, nothing shut down cleanly), then wait until the GCS marks it dead.
        Returns the time.time() of the kill."""
        node_id = self.node_id(name)
        killed_at = time.time()
        self._kill_session(name)  # no longer ours: a dead node's `ray start` must not read as a failed start later
        self.lost.append(name)
        problem = self._wait(f"node {name} marked dead", lambda: node_id not in {n["node_id"] for n in self.alive_nodes()},
                             timeout)
        if problem is not None:
            pytest.fail(f"{problem}\n{self.logs()}")
        return killed_at

    def _start_node(self, name: str, args: list[str], what: str, ready, timeout: float = 120,
                    env: dict[str, str] | None = None) -> str | None:
        """`ray start --block ...` for one node; None once it says it started and ``ready()``, else why not."""
        node_dir = self.root / name
        # Ray puts its sockets at <temp-dir>/session_<date>_<time>_<pid>/sockets/plasma_store: 107 bytes at most.
        assert len(str(node_dir)) + 64 <= 107, f"{node_dir}: too long a --temp-dir for Ray's socket paths"
        node_dir.mkdir()
        log_path = self.root / f"{name}.log"
        # --block keeps `ray start` in the foreground: SIGTERM to it stops the node's processes.
        # A new session per node lets teardown find every process it started (Ray's workers too).
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [str(_ray_cli()), "start", "--block", "--disable-usage-stats", f"--temp-dir={node_dir}", *args],
                env=env or self.env, cwd=node_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.processes[name], self.sessions = process, self.sessions | {process.pid}
        # `ray start` prints this once its own checks pass (its raylet registered with the GCS).
        return self._wait(what, lambda: "Ray runtime started" in log_path.read_text() and ready(), timeout)

    def _wait(self, what: str, ready, timeout: float) -> str | None:
        """None once ``ready()``; else why not (a node's `ray start` exited, or the time ran out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    return f"`ray start` for the {name} node exited ({process.returncode}) while waiting for {what}"
            if ready():
                return None
            time.sleep(1)
        return f"timed out after {timeout}s waiting for {what}"

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        for log in sorted(self.root.glob("*/session_latest/logs/*.err")):
            text = log.read_text(errors="replace").strip()
            if text and ("Error" in text or "Traceback" in text):
                parts.append(f"--- {log.relative_to(self.root)}\n{text[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Workers first, then the head; SIGTERM (what `ray stop` sends), then SIGKILL to stragglers."""
        for name in sorted(self.processes, key=lambda n: n.startswith("head")):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        deadline = time.monotonic() + 10
        while (leftover := _processes_of([str(self.root)], self.sessions)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in leftover:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@contextlib.contextmanager
def running_cluster(s3_server: dict[str, str], prefix: str, redis: Redis | None = None,
                    **start: int) -> Iterator[LocalCluster]:
    """A LocalCluster (``start``: LocalCluster.start's CPU counts), token auth on, torn down even on failure.
    The nodes reach a local S3 (``s3_server``) through the standard AWS variables, as EC2 nodes reach AWS;
    with ``redis``, the GCS keeps its state there (the head can be lost and restarted)."""
    # Ray's socket paths must stay under 107 characters: a short root, not pytest's tmp_path.
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    token_path = root / "auth_token"
    token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update({
        "RAY_AUTH_MODE": "token",                # on every node, and for every client (job submit, serve)
        "RAY_AUTH_TOKEN_PATH": str(token_path),  # default ~/.ray/auth_token; never touch the user's
        "RAY_USAGE_STATS_ENABLED": "0",
        # A SIGTERM'd node first drains for up to 30 s (for Serve upgrades on Kubernetes); not here.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is this one
        **s3_server,
        "ASL_PLATFORM_MODEL_CACHE": str(root / "model-cache"),  # where nodes keep models fetched from s3://
    })
    cluster = LocalCluster(root, env, redis=redis)
    try:
        cluster.start(**start)
        yield cluster
    finally:
        cluster.stop()
        if not os.environ.get("ASL_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(root, ignore_errors=True)


def submit_job(cluster: LocalCluster, submission_id: str, entrypoint: list[str], timeout: float = 300) -> str:
    """`ray job submit --working-dir .` from the repository root; returns the job's output (logs).
    Fails with the job's logs and the cluster's logs when the job does not succeed."""
    command = ["ray", "job", "submit", "--submission-id", submission_id, "--working-dir", ".", "--", *entrypoint]
    try:
        result = cluster.cli(*command, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        cluster.cli("ray", "job", "stop", submission_id)
        logs = cluster.cli("ray", "job", "logs", submission_id)
        pytest.fail(f"job {submission_id} still running after {timeout}s; its logs:\n{logs.stdout[-6000:]}\n"
                    f"{(expired.stderr or b'')[-2000:]!r}\n{cluster.logs()}")
    _, info = cluster.api(f"/api/jobs/{submission_id}")
    status = info.get("status") if isinstance(info, dict) else info
    if result.returncode != 0 or status != "SUCCEEDED":
        reason = info.get("error_type") if isinstance(info, dict) else ""
        pytest.fail(f"`ray job submit` exited {result.returncode}; job {submission_id} {status} {reason}\n"
                    f"--- its output (the job's logs)\n{result.stdout[-8000:]}\n{result.stderr[-3000:]}\n"
                    f"--- cluster\n{cluster.logs()}")
    return result.stdout
