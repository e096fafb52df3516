"""A pool of Ray actors of one class: what the ``ray`` executors of the pipelines share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pixmo.errors import ConfigError


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the ray executor needs `pip install 'pixmo-toolkit[ray]'`") from exc
    return ray


def actor_count(resources: dict[str, float], actors: int | None = None, cpus_per_actor: float = 1.0,
                gpus_per_actor: float = 0.0) -> int:
    """How many actors to start: ``actors``, else one per ``cpus_per_actor`` CPUs of ``resources``;
    never more than the GPUs can hold when each actor needs some."""
    n = actors or max(1, int(resources.get("CPU", 1) // max(cpus_per_actor, 0.01)))
    if gpus_per_actor:
        n = min(n, max(1, int(resources.get("GPU", 0) // gpus_per_actor)))
    return n


class RayPool:
    """``cls(*args)`` on Ray actors behind an ``ActorPool``.

    Ray is started (locally, or on the cluster at ``address``) if it is not running yet;
    :meth:`close` kills the actors and stops Ray only if this pool started it.
    """

    def __init__(self, cls: type, *args: Any, address: str | None = None, actors: int | None = None,
                 cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0):
        ray = import_ray()
        from ray.util import ActorPool

        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.actors: list[Any] = []
        try:
            n = actor_count(ray.cluster_resources(), actors, cpus_per_actor, gpus_per_actor)
            shared = [ray.put(arg) for arg in args]  # stored once, not sent once per actor
            remote = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)(cls)
            for _ in range(n):
                self.actors.append(remote.remote(*shared))
            self.pool = ActorPool(self.actors)
        except BaseException:
            self.close()  # nobody else can: the pool was never handed out
            raise

    def __len__(self) -> int:
        return len(self.actors)

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """``fn(actor, value)`` for each value on a free actor; results in order (``ActorPool.map``)."""
        return self.pool.map(fn, values)

    def close(self) -> None:
        """Kill the actors, and shut Ray down if this pool started it (once)."""
        ray = import_ray()
        actors, self.actors = self.actors, []
        try:
            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - an actor that died already; kill the rest
                    pass
        finally:
            if self._started:
                self._started = False
                ray.shutdown()


__all__ = ["RayPool", "actor_count", "import_ray"]
