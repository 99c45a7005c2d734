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



def test_the_html_templates_escape_what_a_team_writes_and_the_markdown_ones_do_not(tmp_path):
    """Titles, column, class and check names come from params and schemas: in the HTML an auditor
    opens they are text, never markup (a class named "<script>..." must not run). Both HTML
    templates end in .html.j2, which Jinja's select_autoescape(["html"]) did not match."""
    import json

    from privflow.reporting.archive import archive_run
    from privflow.reporting.templates import environment

    assert all(environment().autoescape(name) for name in ("report.html.j2", "index.html.j2"))
    assert not any(environment().autoescape(name) for name in ("report.md.j2", "model_card.md.j2"))
    reports = tmp_path / "reports" / "churn"
    reports.mkdir(parents=True)
    (reports / "report.html").write_text("<html></html>")
    (reports / "report.json").write_text(json.dumps({
        "run_id": "0123456789abcdef", "generated_at": "2026-12-07T08:00:00+00:00",
        "dataset": {"dataset": "<script>alert(1)</script>"}, "manifest": {"snapshot_id": "hmac-sha256:" + "ab" * 32},
        "training": {"privacy": {"epsilon_spent": 2.9}, "accuracy": {"private": 0.8}},
        "budget": {"spent": 2.9, "cap": 30}}))
    index = archive_run(reports).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index and "<script>" not in index
    assert "not evaluated" in index  # a run archived before the evaluate stage


def test_the_run_index_shows_whether_each_model_beat_always_answering_the_most_frequent_class(tmp_path):
    import json

    from privflow.reporting.archive import archive_run

    for dataset, outcome in (("churn", "no better"), ("digits", "better")):
        reports = tmp_path / "reports" / dataset
        reports.mkdir(parents=True)
        (reports / "report.html").write_text("<html></html>")
        (reports / "report.json").write_text(json.dumps({
            "run_id": f"{dataset}-run", "generated_at": "2026-12-07T08:00:00+00:00", "dataset": {"dataset": dataset},
            "manifest": {"snapshot_id": "hmac-sha256:" + "ab" * 32},
            "training": {"privacy": {"epsilon_spent": 2.9}, "accuracy": {"private": 0.76}},
            "evaluation": {"versus_constant": {"accuracy": 0.755, "outcome": outcome}},
            "budget": {"spent": 2.9, "cap": 30}}))
        index = archive_run(reports).read_text()
    rows = index.split("<tr>")
    churn, digits = (next(row for row in rows if f"<td>{name}</td>" in row) for name in ("churn", "digits"))
    assert "0.7550 (<strong>no better</strong>)" in churn and "0.7550 (beaten)" in digits
