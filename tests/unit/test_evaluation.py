"""Class-by-class evaluation: the figures an auditor needs beside accuracy, computed by hand here."""

from __future__ import annotations

import math

import pytest
import torch

from privflow.modeling.evaluation import MIN_CLASS_RECORDS, class_evaluation
from privflow.training.baseline import paired_gap

CLASSES = ["stays", "leaves", "moves"]


def labelled(*counts: int) -> torch.Tensor:
    return torch.cat([torch.full((n,), index) for index, n in enumerate(counts)])


def test_a_model_that_answers_the_largest_class_for_everyone_is_called_no_better_than_that_answer():
    labels = labelled(80, 15, 5)
    evaluation = class_evaluation(torch.zeros(100, dtype=torch.long), labels, CLASSES)
    constant = evaluation["versus_constant"]
    assert evaluation["accuracy"] == 0.8 == constant["accuracy"]  # accuracy alone reads as learning
    assert constant["class"] == "stays" and constant["outcome"] == "no better" and constant["points"] == 0
    assert constant["verdict"] == ("the DP model does no better than always answering 'stays', "
                                   "within the test split's noise")
    assert evaluation["classes_answered"] == 1
    assert evaluation["balanced_accuracy"] == pytest.approx(1 / 3)  # recalls 1, 0, 0


def test_a_model_that_learned_beats_the_constant_answer_with_an_interval_that_excludes_zero():
    labels = labelled(60, 40)
    predicted = labels.clone()
    predicted[:6] = 1  # 6 of the largest class missed, every other record right
    evaluation = class_evaluation(predicted, labels, ["no", "yes"])
    constant = evaluation["versus_constant"]
    assert evaluation["accuracy"] == 0.94 and constant["accuracy"] == 0.6
    assert constant["points"] == pytest.approx(34.0)
    assert constant["outcome"] == "better" and constant["interval_95"][0] > 0
    recall = {row["class"]: row["recall"] for row in evaluation["classes"]}
    assert recall == {"no": pytest.approx(0.9), "yes": 1.0}
    assert evaluation["balanced_accuracy"] == pytest.approx(0.95)
    shares = {row["class"]: row["answered_share"] for row in evaluation["classes"]}
    assert shares == {"no": pytest.approx(0.54), "yes": pytest.approx(0.46)}


def test_a_model_that_answers_a_small_class_for_everyone_is_called_worse():
    labels = labelled(70, 30)
    constant = class_evaluation(torch.ones(100, dtype=torch.long), labels, ["no", "yes"])["versus_constant"]
    assert constant["outcome"] == "worse" and constant["points"] == pytest.approx(-40.0)
    assert constant["interval_95"][1] < 0 and constant["verdict"].startswith("the DP model does worse than")


def test_a_class_with_few_test_records_is_shown_without_its_count_or_recall():
    labels = labelled(50, MIN_CLASS_RECORDS, MIN_CLASS_RECORDS - 1)
    rows = class_evaluation(labels.clone(), labels, CLASSES)["classes"]
    assert [row["records"] for row in rows] == [50, MIN_CLASS_RECORDS, None]
    assert [row["recall"] for row in rows] == [1.0, 1.0, None]
    # what the model answers is about its answers, not about the class's few members: shown
    assert rows[2]["answered_share"] == pytest.approx((MIN_CLASS_RECORDS - 1) / len(labels))


def test_the_paired_interval_is_the_normal_approximation_of_the_mean_difference():
    gained = torch.tensor([1.0] * 30 + [-1.0] * 10 + [0.0] * 60)
    points, half = paired_gap(gained)
    assert points == pytest.approx(20.0)
    assert half == pytest.approx(100 * 1.96 * float(gained.std()) / math.sqrt(100))


def test_with_one_record_per_person_the_interval_over_persons_is_the_plain_one():
    gained = torch.tensor([1.0] * 30 + [-1.0] * 10 + [0.0] * 60)
    assert paired_gap(gained, torch.arange(100).flip(0)) == pytest.approx(paired_gap(gained))


def test_a_persons_records_count_as_one_draw_so_the_interval_widens():
    """Each record twice, under the same person: the mean is the same, the information is not.
    Treated as independent the interval would shrink by sqrt(2); over persons it does not."""
    gained = torch.tensor([1.0] * 30 + [-1.0] * 10 + [0.0] * 60)
    twice, persons = gained.repeat_interleave(2), torch.arange(100).repeat_interleave(2)
    points, half = paired_gap(gained, torch.arange(100))
    assert paired_gap(twice, persons)[0] == pytest.approx(points)
    assert paired_gap(twice, persons)[1] == pytest.approx(half)  # 100 persons' worth of evidence, as before
    assert paired_gap(twice)[1] == pytest.approx(half / math.sqrt(2), rel=0.01)  # what ignoring persons would say
    labels, predicted = labelled(60, 40).repeat_interleave(2), labelled(60, 40).repeat_interleave(2)
    constant = class_evaluation(predicted, labels, ["no", "yes"], torch.arange(100).repeat_interleave(2))
    assert constant["versus_constant"]["over_persons"] is True
    # each record twice under its person: sqrt(2) as wide as counting the 200 records would make it
    assert constant["versus_constant"]["widening_over_persons"] == pytest.approx(math.sqrt(2), rel=0.01)
    one_each = class_evaluation(predicted, labels, ["no", "yes"], torch.arange(200))["versus_constant"]
    assert one_each["over_persons"] is False and one_each["widening_over_persons"] is None  # the plain interval


def test_an_empty_test_split_is_not_measured_and_does_not_fail():
    evaluation = class_evaluation(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), CLASSES)
    assert evaluation["records"] == 0 and math.isnan(evaluation["accuracy"])
    assert evaluation["versus_constant"]["outcome"] == "not measured"
    assert all(row["records"] is None and row["answered_share"] == 0 for row in evaluation["classes"])
