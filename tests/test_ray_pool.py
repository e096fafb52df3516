"""RayPool's lifecycle: a pool that fails to start stops the Ray it started; close is idempotent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import ray
    from pipelines.ray_pool import RayPool

    class Echo:
        def __init__(self, prefix):
            self.prefix = prefix

        def say(self, x):
            return self.prefix + x

    try:
        RayPool(42)  # not a class: Ray starts, then the actors cannot be made
    except AttributeError:
        pass
    print("after failed start:", ray.is_initialized())
    pool = RayPool(Echo, "a-", actors=2, cpus_per_actor=0.5)
    print("results:", list(pool.map(lambda actor, x: actor.say.remote(x), ["x", "y", "z"])))
    pool.close()
    pool.close()
    print("after close:", ray.is_initialized())
""")


def test_failed_start_and_close_leave_no_ray_running():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after failed start: False" in done.stdout
    assert "results: ['a-x', 'a-y', 'a-z']" in done.stdout
    assert "after close: False" in done.stdout
