"""The Dask clients one job runs on: the job's own, plus a worker pool per other profile or
size its steps need (see :mod:`hpcproc.dispatch.sizing`), opened when the first step that needs
it starts and closed, with its batch jobs, when the job ends. Each client has a
:class:`~hpcproc.dispatch.ledger.BatchLedger` that tells which batch jobs a step ran in."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from typing import Any

from distributed import Client

from hpcproc.dispatch.clusters import ClusterProfile, open_client
from hpcproc.dispatch.ledger import BatchLedger
from hpcproc.dispatch.stop import Stop


class ClientPool:
    def __init__(
        self,
        default: Client,
        profiles: Mapping[str, ClusterProfile] | None = None,
        default_profile: ClusterProfile | None = None,
        opener: Callable[[ClusterProfile], AbstractContextManager[Client]] | None = None,
        stop: Stop | None = None,
    ) -> None:
        """``stop``: a pool still waiting for its first worker gives up when it is requested."""
        self.default = default
        self.profiles = dict(profiles or {})
        self._default_key = default_profile.model_dump_json() if default_profile else None
        self._opener = opener or partial(open_client, stop=stop)
        self._clients: dict[str, Client] = {}
        self._ledgers: dict[int, BatchLedger] = {}
        self._stack = ExitStack()
        self._lock = threading.Lock()

    def for_step(self, step_id: str) -> Client:
        """The client step ``step_id`` runs on (its pool is opened now if it is the first)."""
        profile = self.profiles.get(step_id)
        key = profile.model_dump_json() if profile is not None else None
        if profile is None or key == self._default_key:
            return self._ledger(self.default)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._stack.enter_context(self._opener(profile))
            return self._ledger(self._clients[key])

    def _ledger(self, client: Client) -> Client:
        if id(client) not in self._ledgers:
            ledger = BatchLedger(client).start()
            self._ledgers[id(client)] = ledger
            self._stack.callback(ledger.stop)
        return client

    def _opened(self, step_id: str) -> Client | None:
        profile = self.profiles.get(step_id)
        if profile is None or profile.model_dump_json() == self._default_key:
            return self.default
        return self._clients.get(profile.model_dump_json())

    def where(self, step_id: str) -> tuple[dict[str, Any], BatchLedger | None]:
        """What to record of where a step ran: its own pool's profile and dashboard (nothing
        for the job's own client) and that client's ledger; ({}, None) if it never opened."""
        client = self._opened(step_id)
        if client is None:
            return {}, None
        ledger = self._ledgers.get(id(client))
        if client is self.default:
            return {}, ledger
        profile = self.profiles[step_id]
        return {"cluster": profile.name, "dask_dashboard": client.dashboard_link}, ledger

    def opened(self) -> int:
        """Worker pools opened for this job besides the job's own client."""
        return len(self._clients)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
