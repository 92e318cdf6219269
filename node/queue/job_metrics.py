"""Job metrics, read from the queue when Prometheus scrapes.

Jobs are run by worker processes, which have no metrics endpoint of their
own; the queue they write is the record, so the node reports from it: jobs
by state, time spent per stage, and the agreement of the latest reference
comparison per structure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node.queue.job_state import JobState
from node.queue.jobs import JobQueue
from node.queue.results import Agreement, ComparisonResult

#: The agreement measures reported: metric suffix, what it is, how it is read.
_MEASURES: tuple[tuple[str, str, Callable[[Agreement], float | None]], ...] = (
    ("dice", "Dice", lambda a: a.dice),
    ("jaccard", "Jaccard index", lambda a: a.jaccard),
    ("hd95_mm", "95th-percentile Hausdorff distance in mm", lambda a: a.hd95_mm),
)


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
        agreement = [
            (GaugeMetricFamily(f"segnode_qa_{measure}", f"{what} of our structure against the "
                               "latest reference SEG of it.", labels=["route", "structure"]), read)
            for measure, what, read in _MEASURES
        ]
        latest: dict[tuple[str, str], Agreement] = {}
        for job in self._queue.jobs(JobState.DONE):
            if job.result is None:
                continue
            for stage, seconds in job.result.seconds.items():
                key = (job.kind.value, stage)
                totals[key] = totals.get(key, 0.0) + seconds
            if isinstance(job.result, ComparisonResult):
                for structure, values in job.result.agreement.items():
                    latest[(job.route, structure)] = values
        for (kind, stage), seconds in sorted(totals.items()):
            stages.add_metric([kind, stage], seconds)
        for labels, values in sorted(latest.items()):
            for family, read in agreement:
                if (value := read(values)) is not None:
                    family.add_metric(list(labels), value)
        yield stages
        yield from (family for family, _ in agreement)
