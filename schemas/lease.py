"""One writer at a time: the lease an encode job holds on its output URL while it writes.

Two jobs writing one store would each create the arrays, rewrite each other's shards and race
to commit. So a job first takes the store's lease, a small object ``lease.json`` at the root:
who holds it (a random token, host, process) and until when. The holder renews it in a
background thread every ``ttl / 3`` seconds and deletes it when done. Another job that finds a
live lease is refused at once, with one line naming the holder, before it does any work. A
lease left by a killed job is taken over once it has expired (or at once, on the same host,
when its process is gone), so an interrupted encode resumes by running it again.

Taking the lease is "check, write, wait, read back": object stores have no atomic
create-if-absent that every fsspec backend exposes, but they do read their own writes. Two jobs
that both saw no lease both write; each then waits ``settle`` seconds, longer than the moment
between its check and its write, and reads the lease back: both read the last write, so exactly
one of them proceeds.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from schemas.errors import StoreError
from schemas.urls import Location

LEASE = "lease.json"


class WriterLease:
    def __init__(self, location: Location, ttl: float = 60.0, settle: float = 0.5) -> None:
        self.location, self.ttl, self.settle = location, ttl, settle
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self.lost = threading.Event()  # set when another job took the store over from this one
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> WriterLease:
        self.acquire()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.release()
        if kind is None and self.lost.is_set():
            raise StoreError(
                f"{self.location.display}: another encode job took the store over while this "
                "one stalled past its lease; the two may have written the same shards: run "
                "`advmix store validate --full` before using it"
            )

    def acquire(self) -> None:
        self._refuse_if_held()
        self._write()
        time.sleep(self.settle)
        holder = self._read()
        if holder is None or holder.get("token") != self.token:
            raise StoreError(self._held_message(holder or {}))
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="store-lease")
        self._renewer.start()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
            holder = self._read()
            if holder is not None and holder.get("token") == self.token:
                self.location.delete(LEASE)

    # -- the lease object -----------------------------------------------------------------------

    def _record(self) -> dict:
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires": time.time() + self.ttl,
        }

    def _write(self) -> None:
        # atomic: a reader racing a writer sees one whole lease, never a torn one
        self.location.write_atomic(LEASE, json.dumps(self._record()).encode())

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.location.read(LEASE))
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign object: treat it as no lease
            return None
        return holder if isinstance(holder, dict) else None

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                holder = self._read()
                if holder is not None and holder.get("token") != self.token:
                    # this job stalled past its lease and another took the store over:
                    # renewing would overwrite that job's lease, so stop and leave it alone
                    self.lost.set()
                    return
                self._write()
            except StoreError:  # a missed renewal shortens the lease; the next one may land
                pass

    def _refuse_if_held(self) -> None:
        holder = self._read()
        if holder is not None and _alive(holder):
            raise StoreError(self._held_message(holder))

    def _held_message(self, holder: dict) -> str:
        left = max(0.0, float(holder.get("expires", 0)) - time.time())
        return (
            f"{self.location.display} is being written by another encode job (host "
            f"{holder.get('host', '?')}, process {holder.get('pid', '?')}; its lease runs "
            f"{left:.0f} s more and is renewed while it runs): wait for it to finish, or "
            "choose another --output"
        )


def _alive(holder: dict) -> bool:
    """Whether a lease still binds: not expired and, on this host, its process exists."""
    if float(holder.get("expires", 0)) < time.time():
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:  # someone else's process: it exists
            return True
    return True
