"""The report says which columns the model reads and which it leaves: a text model reads one
text column and none of the tabular features a team may have expected it to use."""

from privflow.reporting.context import model_inputs

TICKETS = {"features": ["product=app", "product=modem", "priority", "opened"], "text_columns": ["body", "subject"]}


def test_a_text_model_names_its_column_and_the_features_it_does_not_read():
    inputs = model_inputs(TICKETS, {"column": "body"})
    assert inputs["read"] == ["body"] and inputs["not_read"] == ["product", "priority", "opened", "subject"]


def test_a_tabular_model_names_its_features_and_the_text_it_does_not_read():
    inputs = model_inputs(TICKETS, None)
    assert inputs["read"] == ["product", "priority", "opened"] and inputs["not_read"] == ["body", "subject"]
    assert model_inputs({"features": ["age"]}, None) == {"read": ["age"], "not_read": [],
                                                         "why": "a text column is read by the text preset only"}
