"""Which result objects a job makes and which each destination gets
(node/work/outputs.py), from the configuration as an administrator writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, parse_config
from node.work.outputs import EVERYTHING, SEG_AND_SR, OutputObject, OutputPlan, SegFormat


def destinations(text: str):
    return parse_config(text).destinations


def test_a_destination_gets_seg_and_sr_in_binary_unless_it_says_otherwise():
    [pacs] = destinations("destinations: {pacs: {ae_title: PACS, host: h, port: 104}}\n").values()
    assert (pacs.outputs, pacs.seg_format) == (["seg", "sr"], "binary")
    assert OutputPlan.for_destinations([pacs]) == SEG_AND_SR


def test_a_job_makes_what_any_of_its_destinations_takes():
    chosen = destinations(
        "destinations:\n"
        "  viewer: {ae_title: OHIF, host: h, port: 1, seg_format: labelmap}\n"
        "  pacs: {ae_title: PACS, host: h, port: 2, outputs: [pdf, overlay]}\n"
        "  planning: {ae_title: TPS, host: h, port: 3, outputs: [rtstruct]}\n"
    )
    assert OutputPlan.for_destinations(chosen.values()) == EVERYTHING
    assert OutputPlan.for_destinations([chosen["pacs"]]) == OutputPlan(pdf=True, overlay=True)
    # A LABELMAP wanted by nobody who takes a SEG or an SR is not made.
    only_pdf = destinations("destinations: {d: {ae_title: D, host: h, port: 1, outputs: [pdf], "
                            "seg_format: labelmap}}\n")
    assert OutputPlan.for_destinations(only_pdf.values()) == OutputPlan(pdf=True)


@pytest.mark.parametrize(("seg_format", "expected"), [
    ("binary", {"seg.dcm", "sr.dcm"}),
    ("labelmap", {"labelmap-seg.dcm", "labelmap-sr.dcm"}),
    # Both SEGs, and the SR of the BINARY SEG, which holds every segment.
    ("both", {"seg.dcm", "labelmap-seg.dcm", "sr.dcm"}),
])
def test_each_destination_gets_the_sr_of_the_seg_it_gets(seg_format, expected):
    [destination] = destinations(
        f"destinations: {{d: {{ae_title: D, host: h, port: 1, seg_format: {seg_format}, "
        "outputs: [seg, sr, pdf]}}\n"
    ).values()
    objects = [
        OutputObject("seg", Path("seg.dcm"), "1", SegFormat.BINARY),
        OutputObject("sr", Path("sr.dcm"), "2", SegFormat.BINARY),
        OutputObject("seg", Path("labelmap-seg.dcm"), "3", SegFormat.LABELMAP),
        OutputObject("sr", Path("labelmap-sr.dcm"), "4", SegFormat.LABELMAP),
        OutputObject("overlay", Path("overlay/00001.dcm"), "5"),
        OutputObject("pdf", Path("report.dcm"), "6"),
    ]
    assert {o.path.name for o in objects if o.wanted_by(destination)} == expected | {"report.dcm"}


@pytest.mark.parametrize(("entry", "field", "message"), [
    ("outputs: [seg, pdf, seg]", "outputs", "lists seg more than once"),
    ("outputs: [seg, dicomdir]", "outputs[1]", "'seg', 'sr', 'pdf', 'overlay' or 'rtstruct'"),
    ("outputs: []", "outputs", "at least 1 item"),
    ("outputs: seg", "outputs", "valid list"),
    ("seg_format: labelmap; rm -rf /", "seg_format", "'binary', 'labelmap' or 'both'"),
    ('seg_format: "<script>alert(1)</script>"', "seg_format", "'binary', 'labelmap' or 'both'"),
])
def test_a_bad_output_choice_is_refused_naming_its_field(entry, field, message):
    with pytest.raises(ConfigError) as refused:
        parse_config(f"destinations:\n  pacs:\n    ae_title: PACS\n    host: h\n    port: 104\n    {entry}\n")
    [error] = refused.value.errors
    assert error.startswith(f"destinations.pacs.{field}:") and message in error, error


@pytest.mark.parametrize(("entry", "field", "message"), [
    ("overlay_every: 0", "overlay_every", "greater than or equal to 1"),
    ('disclaimer: ""', "disclaimer", "at least 1 character"),
    ('disclaimer: "   "', "disclaimer", "at least 1 character"),
    (f"disclaimer: {'x' * 1001}", "disclaimer", "at most 1000 characters"),
    ("footer: hello", "footer", "Extra inputs are not permitted"),
])
def test_bad_report_settings_are_refused_naming_their_field(entry, field, message):
    with pytest.raises(ConfigError) as refused:
        parse_config(f"reports:\n  {entry}\n")
    [error] = refused.value.errors
    assert error.startswith(f"reports.{field}:") and message in error, error
