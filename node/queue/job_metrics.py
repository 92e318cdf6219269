"""Job metrics, read from the queue when Prometheus scrapes.

Jobs are run by worker processes, which have no metrics endpoint of their
own; the queue they write is the record, so the node reports from it: jobs
by state, time spent per stage, and the agreement of the latest reference
comparison per structure.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node.queue.jobs import JobQueue, JobState


class JobCollector(Collector):
    def __init__(self, queue: JobQueue):
        self._queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        states = GaugeMetricFamily("segnode_jobs", "Jobs by kind and state.", labels=["kind", "state"])
        for (kind, state), count in self._queue.counts().items():
            states.add_metric([kind.value, state.value], count)
        yield states
        stages = CounterMetricFamily("segnode_job_stage_seconds", "Seconds spent per stage by finished jobs.",
                                     labels=["kind", "stage"])
        totals: dict[tuple[str, str], float] = {}
        agreement = {
            measure: GaugeMetricFamily(f"segnode_qa_{measure}", f"{what} of our structure against the "
                                       "latest reference SEG of it.", labels=["route", "structure"])
            for measure, what in (("dice", "Dice"), ("jaccard", "Jaccard index"),
                                  ("hd95_mm", "95th-percentile Hausdorff distance in mm"))
        }
        latest: dict[tuple[str, str], dict] = {}
        for job in self._queue.jobs(JobState.DONE):
            if not job.result:
                continue
            for stage, seconds in job.result.get("seconds", {}).items():
                key = (job.kind.value, stage)
                totals[key] = totals.get(key, 0.0) + seconds
            for structure, values in job.result.get("agreement", {}).items():
                latest[(job.route, structure)] = values
        for (kind, stage), seconds in sorted(totals.items()):
            stages.add_metric([kind, stage], seconds)
        for labels, values in sorted(latest.items()):
            for measure, family in agreement.items():
                if values.get(measure) is not None:
                    family.add_metric(list(labels), values[measure])
        yield stages
        yield from agreement.values()
