"""The add-on's side of the backend process: start, talk, poll, restart.

Pure Python (subprocess and threads), no bpy and no torch, so it is tested
without Blender. Blender's UI polls ``BackendClient.poll()`` from a timer or
modal operator and never blocks on the worker.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

from .protocol import Message, ProtocolError, encode, read_message, request

ENV_PYTHON = "RFIT_BACKEND_PYTHON"


class BackendUnavailable(RuntimeError):
    """No usable backend: not configured, failed to start, or died."""


def backend_root() -> Path:
    """The folder that holds the ``backend`` package (bundled in the add-on, or the checkout)."""
    here = Path(__file__).resolve().parent
    return here if (here / "backend").is_dir() else here.parent


class BackendClient:
    """A running ``python -m backend serve`` worker."""

    def __init__(self, python: str | None = None):
        self.python = os.environ.get(ENV_PYTHON) or python
        if not self.python:
            raise BackendUnavailable(
                f"no backend Python is set: choose one in the add-on preferences or set {ENV_PYTHON}"
            )
        if not Path(self.python).exists():
            raise BackendUnavailable(f"backend Python not found: {self.python}")
        self.ids = itertools.count(1)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.outbox: queue.Queue | None = None
        self.stderr_tail: list[str] = []
        self._stderr_reader: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(backend_root()), os.environ.get("PYTHONPATH", "")])),
            "PYTHONUNBUFFERED": "1",
        }
        try:
            self.process = subprocess.Popen(
                [self.python, "-m", "backend", "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=str(backend_root()),
            )
        except OSError as error:
            raise BackendUnavailable(f"cannot start the backend with {self.python}: {error}") from error
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        self.outbox = queue.Queue()
        threading.Thread(target=self._write, args=(self.process, self.outbox), daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._drain_stderr, args=(self.process,), daemon=True)
        self._stderr_reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        try:
            while True:
                message = read_message(process.stdout)
                if message is None:
                    break
                self.inbox.put(message)
        except (ProtocolError, EOFError, OSError) as error:
            self.inbox.put(
                Message({"id": -1, "type": "error", "message": f"backend stream broken: {error}", "fatal": True})
            )

    def _write(self, process: subprocess.Popen, outbox: queue.Queue) -> None:
        """Send requests in order. A pipe write blocks while the worker is busy or
        still starting, so it happens here and never on Blender's thread."""
        while True:
            request_id, frame = outbox.get()
            try:
                process.stdin.write(frame)
                process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as error:
                self.inbox.put(Message({"id": request_id, "type": "error", "message": f"the backend stopped: {error}"}))
                if process.poll() is not None:
                    return

    def _drain_stderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.stderr_tail = (self.stderr_tail + [line.decode("utf-8", "replace").rstrip()])[-40:]

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def submit(self, kind: str, arrays=None, **fields) -> int:
        """Queue a request for the writer thread (never blocks); returns its id.
        Restarts a dead worker first."""
        if not self.alive:
            self.start()
        with self.lock:
            request_id = next(self.ids)
            frame = encode(request(kind, request_id, arrays, **fields))  # a bad request fails here, at once
            self.outbox.put((request_id, frame))
        return request_id

    def poll(self) -> list[Message]:
        """Every message that arrived since the last poll (never blocks)."""
        messages = []
        while True:
            try:
                messages.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        if not messages and not self.alive:
            messages.append(
                Message(
                    {"id": -1, "type": "error", "message": f"the backend exited: {self.last_error()}", "fatal": True}
                )
            )
        return messages

    def wait(self, request_id: int, timeout: float = 600.0, on_progress=None) -> Message:
        """Block until the answer to ``request_id`` (scripts and tests; the UI polls instead)."""
        deadline = time.monotonic() + timeout
        pending: list[Message] = []
        while time.monotonic() < deadline:
            try:
                message = self.inbox.get(timeout=0.05)
            except queue.Empty:
                if not self.alive and self.inbox.empty():
                    raise BackendUnavailable(f"the backend exited: {self.last_error()}") from None
                continue
            if message.id == request_id and message.type in ("result", "error"):
                for other in pending:
                    self.inbox.put(other)
                return message
            if message.id == -1 and message.get("fatal"):
                raise BackendUnavailable(message["message"])
            if message.id == request_id and on_progress is not None:
                on_progress(message)
            elif message.id != request_id:
                pending.append(message)
        raise TimeoutError(f"no answer to request {request_id} within {timeout} s")

    def call(self, kind: str, arrays=None, timeout: float = 600.0, **fields) -> Message:
        """Send and wait; raises ``RuntimeError`` with the backend's message on an error."""
        answer = self.wait(self.submit(kind, arrays, **fields), timeout)
        if answer.type == "error":
            raise RuntimeError(answer["message"])
        return answer

    def last_error(self) -> str:
        """What went wrong, in a line the user can act on (see ``explain``)."""
        if not self.alive and self._stderr_reader is not None:
            self._stderr_reader.join(0.5)  # the process is gone: its last words are on their way
        return explain(self.stderr_tail, self.python)

    def kill(self) -> None:
        """Stop the worker at once (it stopped answering)."""
        if self.process is not None and self.alive:
            self.process.kill()
            try:
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass

    def shutdown(self, timeout: float = 10.0) -> None:
        if not self.alive:
            return
        try:
            self.submit("shutdown")
            self.process.wait(timeout)
        except (BackendUnavailable, subprocess.TimeoutExpired):
            self.process.kill()
            try:  # reap it, so that ``alive`` is false once this returns
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass


_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")


def explain(lines: list[str], python: str | None) -> str:
    """The useful part of a backend's traceback: a missing package and what to
    do about it, or else the traceback's last line."""
    for line in reversed(lines):
        missing = _MISSING_MODULE.search(line)
        if missing:
            package = missing.group(1).split(".")[0]
            return (
                f"the backend Python {python} has no '{package}' package: install the backend into that "
                f"environment (the README's set-up: pip install -e . in the repository) or choose another "
                f"Backend Python in the add-on's preferences"
            )
    text = [line for line in lines if line.strip()]
    return text[-1] if text else "no output"
