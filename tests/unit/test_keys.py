"""Which Redis keys belong to a deployment: its own, and RQ's of its queues, jobs, workers."""

from __future__ import annotations

import fnmatch
import re

import pytest

from hookdrop.keys import Keys


def test_job_ids_and_worker_names_start_with_the_prefix_and_are_valid_rq_ids() -> None:
    keys = Keys("hook.drop")
    job, worker = keys.new_job_id(), keys.new_worker_name("notifier")

    assert job.startswith("hook_drop-") and worker.startswith("hook_drop-notifier-")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", job) and re.fullmatch(r"[A-Za-z0-9_-]+", worker)
    assert job != keys.new_job_id()


@pytest.mark.parametrize("prefix", ["t1234abcd", "hook.drop"])
def test_a_deployment_owns_its_keys_and_rq_keys_of_its_queues_jobs_and_workers(
    prefix: str,
) -> None:
    keys = Keys(prefix)
    job, worker = keys.new_job_id(), keys.new_worker_name("batcher")

    for key in (
        keys.checkpoint(7),
        keys.epoch,
        f"rq:queue:{keys.notifier_queue}",
        f"rq:wip:{keys.batcher_queue}",
        f"rq:queue:{keys.batcher_queue}:intermediate",
        f"rq:job:{job}",
        f"rq:job:{job}:dependents",
        f"rq:results:{job}",
        f"rq:execution:{job}:1a2b",
        f"rq:worker:{worker}",
        f"rq:worker:{worker}:executions",
        f"rq:workers:{keys.notifier_queue}",
    ):
        assert keys.owns(key), key
        assert any(fnmatch.fnmatchcase(key, pattern) for pattern in keys.scan_patterns), key


def test_a_deployment_owns_no_key_of_another_prefix_nor_rq_shared_keys() -> None:
    keys, other = Keys("hookdrop"), Keys("hookdrop-batcher")
    # The other prefix starts like ours followed by one of our queue names.
    for key in (
        other.checkpoint(7),
        f"rq:queue:{other.batcher_queue}",
        f"rq:job:{other.new_job_id()}",
        f"rq:worker:{other.new_worker_name('batcher')}",
        f"rq:job:{Keys('hookdrop_2').new_job_id()}",
        "rq:queues",
        "rq:workers",
        "rq:suspended",
        "hookdropx:epoch",
        f"rq:job:{Keys('x').new_job_id()}",
    ):
        assert not keys.owns(key), key


def test_the_default_endpoint_keeps_its_key_names_and_others_get_their_own() -> None:
    keys = Keys("hd")
    assert keys.scoped("default") == keys
    assert (keys.backpressure, keys.ratelimit, keys.ratecontrol, keys.outcomes) == (
        "hd:backpressure",
        "hd:rl",
        "hd:rl:ctl",
        "hd:rl:outcomes",
    )
    chat = keys.scoped("chat")
    per_endpoint = {chat.backpressure, chat.ratelimit, chat.ratecontrol, chat.outcomes}
    per_endpoint.add(chat.breaker)
    assert all(key.startswith("hd:ep:chat:") for key in per_endpoint)
    assert all(keys.owns(key) for key in per_endpoint)
    assert chat.notifier_queue == keys.notifier_queue  # one queue shared by every endpoint
