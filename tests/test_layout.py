import pytest
import torch

from pacgen.layout import (
    Box, LayoutError, cell_mask, expand_prompt, parse_box, region_masks, check_boxes, clamp_box, with_concept_refs,
    without_concepts, without_phrases,
)


def test_mask_covers_exactly_the_box_cells():
    mask = cell_mask((0.25, 0.5, 0.75, 1.0), 8, 8)
    expected = torch.zeros(8, 8)
    expected[4:8, 2:6] = 1
    assert torch.equal(mask, expected)


def test_mask_rounds_edges_to_cell_centres():
    # 0.3 * 10 = 3.0 -> starts at cell 3; 0.64 * 10 = 6.4 -> cell 6's centre (6.5) is outside
    mask = cell_mask((0.3, 0.0, 0.64, 1.0), 10, 10)
    assert mask[0].nonzero().flatten().tolist() == [3, 4, 5]


def test_feathering_keeps_support_and_stays_bounded():
    hard = cell_mask((0.1, 0.1, 0.9, 0.9), 16, 16)
    soft = cell_mask((0.1, 0.1, 0.9, 0.9), 16, 16, feather=3)
    assert torch.equal(soft > 0, hard > 0)
    assert soft.max() == 1.0 and soft.min() >= 0.0
    assert soft[8, 8] == 1.0 and soft[2, 8] == pytest.approx(0.25)  # edge cell: 1/(3+1)


def test_overlap_goes_to_the_smaller_box_and_masks_sum_to_at_most_one():
    big, small = Box("a", (0.0, 0.0, 1.0, 1.0)), Box("b", (0.25, 0.25, 0.5, 0.5))
    assert region_masks([big, small], 8, 8, feather=2).sum(0).max() <= 1.0 + 1e-6
    masks = region_masks([big, small], 8, 8)
    assert masks[1, 3, 3] == 1.0 and masks[0, 3, 3] == 0.0
    assert masks[0, 7, 7] == 1.0


@pytest.mark.parametrize(
    "box, message",
    [
        (Box("x", (0.5, 0.1, 0.4, 0.9)), "x0=0.5 must be smaller than x1=0.4"),
        (Box("x", (0.1, 0.9, 0.4, 0.2)), "y0=0.9 must be smaller than y1=0.2"),
        (Box("x", (-0.2, 0.1, 0.4, 0.9)), "outside [0, 1]"),
        (Box("x", (0.1, 0.1, 0.4, 1.3)), "outside [0, 1]"),
        (Box("x", (0.50, 0.50, 0.52, 0.52)), "too small"),
        (Box(" ", (0.1, 0.1, 0.4, 0.9)), "empty label"),
        (Box("x", (float("nan"), 0.1, 0.4, 0.9)), "four finite numbers"),
    ],
)
def test_bad_boxes_are_refused_with_a_precise_message(box, message):
    with pytest.raises(LayoutError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_boxes([box], (8, 8))


def test_coordinates_a_hair_outside_are_accepted_and_clamped():
    box = Box("x", (-0.0005, 0.0, 1.0004, 1.0))
    check_boxes([box], (8, 8))
    assert clamp_box(box).xyxy == (0.0, 0.0, 1.0, 1.0)


def test_more_than_30_boxes_refused():
    with pytest.raises(LayoutError, match="at most 30"):
        check_boxes([Box("x", (0.0, 0.0, 0.5, 0.5))] * 31, (8, 8))


def test_parse_box_cli_form():
    box = parse_box("<my dog>=0.1,0.2,0.5,0.9")
    assert box.concept == "my dog" and box.xyxy == (0.1, 0.2, 0.5, 0.9)
    assert parse_box("a red ball=0,0,1,1").concept is None
    with pytest.raises(LayoutError, match="4 coordinates"):
        parse_box("ball=0,0,1")
    with pytest.raises(LayoutError, match="four numbers"):
        parse_box("ball=0,0,1,x")


def test_prompt_expansion_per_branch():
    words = {"my dog": ("sks", "dog"), "my cup": ("ohwx", "cup")}
    prompt = "<my dog> next to <my cup> on grass"
    assert expand_prompt(prompt, words, set()) == "dog next to cup on grass"
    assert expand_prompt(prompt, words, {"my dog"}) == "sks dog next to cup on grass"
    with pytest.raises(LayoutError, match="unknown concept '<cat>'"):
        expand_prompt("<cat>", words, set())


def test_missing_concept_references_are_appended():
    assert with_concept_refs("a dog on grass", ["my dog"]) == "a dog on grass, <my dog>"
    assert with_concept_refs("<my dog> on grass", ["my dog"]) == "<my dog> on grass"
    assert with_concept_refs("", ["a", "a"]) == "<a>"


@pytest.mark.parametrize("prompt, phrases, expected", [
    ("a photo of <x> and a blue circle on grass", ["a blue circle"], "a photo of <x> on grass"),
    ("a blue circle, <x> on grass", ["a blue circle"], "<x> on grass"),
    ("A Blue Circle next to <x>", ["a blue circle"], "next to <x>"),
    ("<a red star> and a red star", ["a red star"], "<a red star>"),  # a concept's name is left alone
    ("a bluebird and <x>", ["blue"], "a bluebird and <x>"),  # whole words only
    ("<x> with a hat (red)", ["a hat (red)"], "<x>"),
])
def test_without_phrases_drops_the_other_boxes_words(prompt, phrases, expected):
    assert without_phrases(prompt, phrases) == expected


@pytest.mark.parametrize("prompt, names, expected", [
    ("a photo of <x> and <y> on grass", ["y"], "a photo of <x> on grass"),
    ("<y>, <x> beside <z>", ["y", "z"], "<x>"),
    ("<x> and <y+>", ["y+"], "<x>"),  # names are text, not patterns
    ("<x> and <xy>", ["x"], "and <xy>"),  # as without_phrases: the joining word before is dropped
])
def test_without_concepts_drops_the_other_concepts_with_their_joining_words(prompt, names, expected):
    assert without_concepts(prompt, names) == expected
