"""The convergence chart's SVG: well-formed, labelled for screen readers, safe with hostile text, and
readable without colour (the random-search line is dashed)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from gateway.web.chart import EMPTY, HEIGHT, WIDTH, convergence_svg

SVG = "{http://www.w3.org/2000/svg}"
CURVE = [0.5, 0.3, 0.2, 0.12, 0.1, 0.1, 0.09, 0.08]
RANDOM = [0.6, 0.45, 0.4, 0.37, 0.36, 0.35, 0.35, 0.34]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def polylines(root: ET.Element, kind: str) -> list[ET.Element]:
    group = root.find(f"{SVG}g[@class='series series-{kind}']")
    return [] if group is None else group.findall(f"{SVG}polyline")


def points(line: ET.Element) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in pair.split(",")) for pair in line.get("points", "").split()]


def test_the_chart_is_an_image_with_a_title_and_a_description():
    root = parse(convergence_svg(CURVE, RANDOM, label="Convergence of s123"))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img" and root.get("viewBox") == f"0 0 {WIDTH} {HEIGHT}"
    title_id, desc_id = root.get("aria-labelledby", "").split()
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert (title.get("id"), desc.get("id")) == (title_id, desc_id)
    assert title.text == "Convergence of s123"
    assert "After 8 rounds: this submission 0.08, random search 0.34" in desc.text
    assert "lower is better" in desc.text
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"this submission", "random search", "round", "1", "8", "0", "0.5", "lower is better"} <= set(
        texts
    )


def test_random_search_is_dashed_and_the_submission_solid():
    root = parse(convergence_svg(CURVE, RANDOM))
    (mine,), (random,) = polylines(root, "submission"), polylines(root, "random")
    assert random.get("stroke-dasharray") and not mine.get("stroke-dasharray")
    assert len(points(mine)) == len(points(random)) == 8
    # Lower is better, drawn lower: y grows downwards in SVG.
    assert points(mine)[-1][1] > points(random)[-1][1]


def test_a_hostile_label_is_text_not_markup():
    hostile = '<script>alert(1)</script>"&'
    svg = convergence_svg(CURVE, RANDOM, label=hostile, chart_id="c1")
    assert "<script" not in svg
    root = parse(svg)
    assert root.find(f"{SVG}title").text == hostile
    assert not list(root.iter(f"{SVG}script")) and not list(root.iter("script"))
    with pytest.raises(ValueError):
        convergence_svg(CURVE, RANDOM, chart_id='x" onload="alert(1)')


@pytest.mark.parametrize("curve", [[], [math.nan, None, math.inf]])
def test_no_finished_study_says_so(curve):
    out = convergence_svg(curve, RANDOM)
    assert out == EMPTY and "No finished study yet" in out
    parse(out)  # still well-formed markup for a template


def test_gaps_and_outliers_are_skipped_or_clipped_never_drawn_off_the_chart():
    curve = [0.5, math.nan, None, 0.2, math.inf, -5.0, 0.1]
    root = parse(convergence_svg(curve, [50.0, *RANDOM[1:7]]))
    runs = polylines(root, "submission")
    assert [len(points(line)) for line in runs] == [2]  # 0.2 alone makes no line; -5.0 and 0.1 do
    assert len(root.find(f"{SVG}g[@class='series series-submission']").findall(f"{SVG}circle")) == 4
    for line in runs + polylines(root, "random"):
        for x, y in points(line):
            assert 0 <= x <= WIDTH and 0 <= y <= HEIGHT
    assert "After 7 rounds: this submission 0.1, random search 0.35" in root.find(f"{SVG}desc").text


def test_without_a_baseline_only_the_submission_is_drawn():
    root = parse(convergence_svg([0.4], []))
    assert len(root.find(f"{SVG}g[@class='series series-submission']").findall(f"{SVG}circle")) == 1
    assert polylines(root, "random") == []
    assert "random search" not in [t.text for t in root.iter(f"{SVG}text")]
    assert "no random-search baseline" in root.find(f"{SVG}desc").text


def test_two_charts_on_one_page_have_distinct_ids():
    a, b = parse(convergence_svg(CURVE, RANDOM, chart_id="a")), parse(convergence_svg(CURVE, RANDOM))
    assert a.get("aria-labelledby") != b.get("aria-labelledby")
