"""Real `segstream worker` processes for the fleet tests (the console script, as a user runs it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from servers import wait_for  # noqa: F401 (the fleet tests import it from here)

SEGSTREAM = str(Path(sys.executable).with_name("segstream"))

#: Short time constants so failover happens within seconds; small input so the CPU keeps up.
FLEET_CONFIG = {
    "model": {"input_size": [128, 224], "score_threshold": 0.05},
    "engine": {"threads": 1, "batch_size": 2},
    "source": {"decoder_threads": 1, "stall_timeout": 5},
    "output": {"progress": False},
    "fleet": {"lease": 3.0, "heartbeat": 0.5, "max_attempts": 3},
    "shutdown_timeout": 5,
}


def write_config(directory: Path, redis_url: str, **fleet: Any) -> Path:
    raw = json.loads(json.dumps(FLEET_CONFIG))
    raw["redis"] = {"url": redis_url}
    raw["fleet"].update(fleet)
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class WorkerProcess:
    """`segstream worker --config ... --name NAME --capacity N`, stderr kept in a file."""

    def __init__(self, config: Path, name: str, capacity: int, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen([SEGSTREAM, "worker", "--config", str(config), "--name", name,
                                         "--capacity", str(capacity)],
                                        stdout=self._log_file, stderr=subprocess.STDOUT)

    def ready(self, client) -> bool:
        assert self.process.poll() is None, f"worker {self.name} exited: {self.output()}"
        return bool(client.exists(f"segstream:fleet:worker:{self.name}"))

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text()

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def entries(client, stream_id: str) -> list[tuple[str, dict]]:
    return [(i.decode(), json.loads(f[b"data"])) for i, f in client.xrange(f"segstream:{stream_id}")]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([SEGSTREAM, *args], capture_output=True, text=True, timeout=timeout)
