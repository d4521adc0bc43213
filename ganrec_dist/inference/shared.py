"""One copy of a run's arrays per node for Serve's replicas, through Ray's object store.

`ganrec score` puts :func:`~ganrec_dist.retrieval.recommender.load_parts` in the object store from
its driver and hands the reference to its actors. Serve's replicas have no driver that outlives them
(``serve deploy``), so a detached holder actor per run and checkpoint version owns the object:
each replica asks the holder for the reference and reads the arrays zero-copy (a replica on
another node gets the object copied to its node's store once, shared there too). The holders are
named in the ``ganrec`` namespace; :func:`release` removes them when the app is shut down.
"""

from __future__ import annotations

import hashlib
from typing import Any

import ray

NAMESPACE = "ganrec"
PREFIX = "ganrec-parts-"


@ray.remote(num_cpus=0)
class PartsHolder:
    """Owns the object-store copy of one run version's parts."""

    def __init__(self, run: str) -> None:
        from ganrec_dist.data.layout import RunDir
        from ganrec_dist.retrieval.recommender import load_parts

        self.ref = ray.put(load_parts(RunDir.open(run)))

    def reference(self) -> list:
        return [self.ref]  # in a list: a bare reference would be resolved to the value


def holder_name(run: str) -> str:
    """The holder of a run's current checkpoint (a retrained run gets a new one)."""
    from ganrec_dist.data.layout import RunDir

    opened = RunDir.open(run)
    meta = (opened.checkpoint / RunDir.META).read_bytes()
    key = hashlib.sha256(opened.uri.encode() + b"\0" + meta).hexdigest()[:24]
    return PREFIX + key


def parts(run: str) -> Any:
    """The run's parts, read from the object store (the holder is started on first use)."""
    holder = PartsHolder.options(  # type: ignore[attr-defined]
        name=holder_name(run), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(run)
    (ref,) = ray.get(holder.reference.remote())
    return ray.get(ref)


def release() -> int:
    """Stop every holder (after the app is shut down); returns how many there were."""
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == NAMESPACE and a["name"].startswith(PREFIX)
    ]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:  # gone meanwhile
            pass
    return len(names)
