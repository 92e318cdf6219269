"""Routing: which routes match a series, and what jobs it gets."""

from __future__ import annotations

from config import RouteMatch, parse_config
from node.assemble.routing import SeriesFacts, jobs_for, route_matches
from node.queue.jobs import JobKind

CONFIG = parse_config("""
destinations:
  PACS: {ae_title: PACS, host: 127.0.0.1, port: 104}
  RESEARCH: {ae_title: RES, host: 127.0.0.1, port: 105}
pipelines: {organs: {}, research: {model: builtin}}
routes:
  - {name: all-ct, match: {modality: CT}, pipeline: organs, send_to: [PACS]}
  - {name: chest-study, match: {calling_ae: "SCANNER*", series_description: "*thorax*",
      body_part_examined: "CHEST"}, pipeline: research, send_to: [RESEARCH, PACS]}
""")


def facts(**changes) -> SeriesFacts:
    values = dict(calling_ae="SCANNER2", called_ae="SEGNODE", modality="CT",
                  series_description="Thorax 1.0 Br40", body_part_examined="chest",
                  reference_subjects=())
    return SeriesFacts(**{**values, **changes})


class _NoJobs:
    def segmentations_of(self, uid):
        return []


class _Record:
    series_instance_uid = "1.2.3"


def test_patterns_are_shell_style_case_insensitive_and_absent_fields_match_anything():
    match = RouteMatch(calling_ae="scanner?", series_description="*THORAX*")
    assert route_matches(match, facts())
    assert not route_matches(match, facts(calling_ae="SCANNER10"))
    assert not route_matches(match, facts(series_description="Abdomen"))
    assert route_matches(RouteMatch(), facts(modality="MR"))


def test_every_matching_route_makes_a_job_for_its_destinations():
    jobs = jobs_for(_Record(), facts(), CONFIG, _NoJobs())
    assert [(j.kind, j.route, j.pipeline, j.destinations) for j in jobs] == [
        (JobKind.SEGMENT, "all-ct", "organs", ("PACS",)),
        (JobKind.SEGMENT, "chest-study", "research", ("RESEARCH", "PACS")),
    ]
    jobs = jobs_for(_Record(), facts(body_part_examined="ABDOMEN"), CONFIG, _NoJobs())
    assert [j.route for j in jobs] == ["all-ct"]


def test_pet_and_other_objects_get_no_job():
    for modality in ("PT", "SR", "PR", "MR"):
        assert jobs_for(_Record(), facts(modality=modality), CONFIG, _NoJobs()) == []


def test_a_seg_of_ours_gets_no_qa_and_a_foreign_one_only_for_series_we_segmented():
    class Segmented:
        def segmentations_of(self, uid):
            if uid != "9.9":
                return []

            class Job:
                route, pipeline, destinations = "all-ct", "organs", ("PACS",)
            return [Job()]

    foreign = facts(modality="SEG", reference_subjects=("8.8", "9.9"))
    (job,) = jobs_for(_Record(), foreign, CONFIG, Segmented())
    assert (job.kind, job.route, job.subject) == (JobKind.QA, "all-ct", "9.9")
    # Our own SEG is no reference (dicomio.seg_reference.reference_subjects; tests/test_seg_reference.py).
    ours = facts(modality="SEG", reference_subjects=())
    assert jobs_for(_Record(), ours, CONFIG, Segmented()) == []


def test_a_spect_gets_a_dosimetry_job_on_each_route_whose_pipeline_does_dosimetry():
    config = parse_config("""
destinations: {PACS: {ae_title: PACS, host: 127.0.0.1, port: 104}}
pipelines: {organs: {}, lu177: {dosimetry: {neighbours: [spleen, liver]}}}
routes:
  - {name: all-ct, pipeline: organs, send_to: [PACS]}
  - {name: therapy, match: {modality: NM, calling_ae: "SPECT*"}, pipeline: lu177, send_to: [PACS]}
""")
    jobs = jobs_for(_Record(), facts(modality="NM", calling_ae="SPECTCT1"), config, _NoJobs())
    assert [(j.kind, j.route, j.pipeline, j.subject) for j in jobs] == [
        (JobKind.DOSIMETRY, "therapy", "lu177", "1.2.3")]
    # Another sender's NM (a bone scan), and a CT on the route of no modality, get none of it.
    assert jobs_for(_Record(), facts(modality="NM", calling_ae="GAMMA"), config, _NoJobs()) == []
    assert [j.kind for j in jobs_for(_Record(), facts(), config, _NoJobs())] == [JobKind.SEGMENT]
