"""Format checks: balanced \\boxed{} parsing, think-tag counting, answer tags, the well-formatted rule."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tina_probe.formats import answer_region, boxed_contents, canonical_boxes, format_report

GOOD = "<think>\n7-3=4\n4*5=20\n</think>\n\\boxed{20}"


def test_lab_completion_is_well_formatted():
    r = format_report(GOOD)
    assert (r.think_opened, r.think_closed, r.n_boxed, r.n_boxed_after_think) == (True, True, 1, 1)
    assert r.well_formatted and not r.truncated and not r.answer_tag


def test_think_in_prompt_completion_without_opening_tag():
    completion = "7-3=4\n</think>\n\\boxed{4}"
    assert format_report(completion, think_in_prompt=True).think_opened
    assert not format_report(completion).think_opened
    assert format_report(completion, think_in_prompt=True).well_formatted
    assert format_report(completion).think_closed  # closing tag once, no opening to be out of order with


def test_truncation_breaks_format():
    r = format_report(GOOD, truncated=True)
    assert r.truncated and not r.well_formatted and r.think_closed and r.n_boxed_after_think == 1


def test_boxed_only_inside_think():
    r = format_report("<think>\n\\boxed{20}\n</think>\nso twenty")
    assert (r.n_boxed, r.n_boxed_after_think, r.well_formatted) == (1, 0, False)


def test_two_boxed_after_think():
    r = format_report("<think>\nx\n</think>\n\\boxed{20} or \\boxed{21}")
    assert (r.n_boxed_after_think, r.well_formatted) == (2, False)


def test_unclosed_and_doubly_closed_think():
    unclosed = format_report("<think>\n7-3=4\n\\boxed{4}")
    assert not unclosed.think_closed and unclosed.n_boxed_after_think == 0 and not unclosed.well_formatted
    twice = format_report("<think>\na\n</think>\nb\n</think>\n\\boxed{4}")
    assert not twice.think_closed and twice.n_boxed_after_think == 0 and not twice.well_formatted


def test_think_reopened_after_close_is_not_closed():
    r = format_report("</think>\n<think>\n\\boxed{4}")
    assert not r.think_closed and not r.well_formatted


def test_answer_tag():
    assert format_report("<think>\na\n</think>\n<answer>\n4\n</answer>").answer_tag
    assert not format_report("<answer>\n4\n").answer_tag
    assert not format_report("</answer> <answer>").answer_tag


def test_boxed_contents_nested_and_spelled_variants():
    text = r"\boxed{\frac{1}{2}} and \boxed {x^{2}} and \fbox{7} and \boxed{\{1,2\}}"
    assert boxed_contents(text) == [r"\frac{1}{2}", "x^{2}", "7", r"\{1,2\}"]


def test_boxed_contents_skips_unclosed_and_counts_nested_once():
    assert boxed_contents(r"\boxed{\frac{1}{2}") == []
    assert boxed_contents(r"\boxed{3} then \boxed{4") == ["3"]
    assert boxed_contents(r"\boxed{\boxed{5}}") == [r"\boxed{5}"]
    assert boxed_contents("no box {here}") == []


def test_answer_region():
    assert answer_region("a</think>b") == "b"
    assert answer_region("a</think>b</think>c") == ""
    assert answer_region("no close") == ""


def test_canonical_boxes():
    assert canonical_boxes(r"\boxed {1} \fbox{2} \boxed{3}") == r"\boxed{1} \boxed{2} \boxed{3}"


# Brace-balanced strings without backslashes: what \boxed{...} can hold.
_balanced = st.recursive(
    st.text(alphabet="ab12+-/ ^_", max_size=6),
    lambda inner: st.builds(lambda a, b: a + "{" + b + "}", inner, inner)
    | st.builds(lambda a, b: a + b, inner, inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(_balanced, _balanced, st.text(alphabet="xyz .\n", max_size=5))
def test_boxed_contents_roundtrip(content, other, prefix):
    text = f"{prefix}\\boxed{{{content}}}{other}\\fbox{{{other}}}"
    assert boxed_contents(text) == [content.strip(), other.strip()]


# --------------------------------------------------------------------------- the boxed answer format

BOXED_CASES = [
    # completion, truncated, think_in_prompt, well formatted in think_boxed, well formatted in boxed
    ("7 + 5 = 12, so the answer is \\boxed{12}.", False, False, False, True),
    ("7 + 5 = 12, so the answer is \\boxed{12}.", True, False, False, False),  # cut off
    ("\\boxed{12} or \\boxed{13}", False, False, False, False),  # two answers
    ("7 + 5 = 12", False, False, False, False),  # no box
    ("<think>7 + 5 = 12</think> \\boxed{12}", False, False, True, True),  # tags, closed
    ("<think>7 + 5 = 12 \\boxed{12}", False, False, False, False),  # opened, never closed
    ("<think>\\boxed{12}</think> the end", False, False, False, False),  # box only inside the thinking
    ("</think> \\boxed{12} <think>", False, False, False, False),  # reopened after closing
    ("7 + 5 = 12 \\boxed{12}", False, True, False, False),  # the prompt opened thinking: it must close
    ("7 + 5 = 12</think>\\boxed{12}", False, True, True, True),
]


def test_boxed_answer_format_against_cases():
    for text, truncated, think, want_think_boxed, want_boxed in BOXED_CASES:
        r1 = format_report(text, truncated=truncated, think_in_prompt=think)
        r2 = format_report(text, truncated=truncated, think_in_prompt=think, answer_format="boxed")
        assert r1.well_formatted == want_think_boxed, text
        assert r2.well_formatted == want_boxed, text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab \\{}<>/thinkboxed", max_size=40), st.booleans(), st.booleans())
def test_boxed_format_is_looser_and_same_when_tagged(text, truncated, think):
    """Every think_boxed-formatted completion is boxed-formatted; with thinking tags both formats agree."""
    r1 = format_report(text, truncated=truncated, think_in_prompt=think)
    r2 = format_report(text, truncated=truncated, think_in_prompt=think, answer_format="boxed")
    assert not r1.well_formatted or r2.well_formatted
    if think or "<think>" in text or "</think>" in text:
        assert r1 == r2


def test_answer_region_boxed_format():
    assert answer_region("a \\boxed{1}", "boxed") == "a \\boxed{1}"
    assert answer_region("a \\boxed{1}") == ""
    assert answer_region("<think>a \\boxed{1}", "boxed") == ""
    assert answer_region("x</think>y", "boxed") == "y"


def test_an_empty_box_is_not_an_answer():
    """One \\boxed{} that holds nothing states no answer: not well formatted in either answer format."""
    for fmt in ("boxed", "think_boxed"):
        for text in ("<think>7 + 5</think> 7 + 5 = \\boxed{}.", "<think>x</think>\\boxed{ }"):
            report = format_report(text, answer_format=fmt)
            assert report.n_boxed_after_think == 1 and not report.well_formatted, (fmt, text)
        assert format_report("<think>x</think>\\boxed{12}", answer_format=fmt).well_formatted
