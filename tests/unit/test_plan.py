"""The run plan's words for DVC's status of a stage."""

from privflow.flows.plan import _reasons


def test_params_code_data_and_outputs_are_each_said():
    status = [{"changed deps": {"params.yaml": {"train.epochs": "modified"}, "data/source/x.csv": "modified",
                                "/venv/privflow/training/loop.py": "modified"}},
              {"changed outs": {"artifacts/x/train": "deleted"}}, "always changed"]
    assert _reasons(status, "/venv/privflow") == [
        "param train.epochs modified", "data/source/x.csv modified", "privflow code training/loop.py modified",
        "output artifacts/x/train deleted", "always changed"]


def test_an_input_a_release_added_is_said_as_new_not_as_deleted():
    """DVC calls a dep that dvc.lock has no record of, and that a stage before it has yet to
    write, "deleted" (an upgrade that made compress read evaluate's figures)."""
    status = [{"changed deps": {"metrics/x/evaluate.json": "deleted", "metrics/x/train.json": "deleted"}}]
    assert _reasons(status, "components", {"metrics/x/train.json": "0f"}) == [
        "a new input, metrics/x/evaluate.json (a release added it)", "metrics/x/train.json deleted"]


def test_an_upgrade_is_counted_not_listed():
    status = [{"changed deps": {f"components/m{i}.py": "modified" for i in range(9)}}]
    assert _reasons(status, "components") == ["privflow code: 9 files changed"]


def test_a_stage_never_run_says_so():
    assert _reasons([], "components") == ["never run"]


def test_a_changed_fingerprint_is_said_as_the_source_or_as_the_upgrade_that_added_it():
    status = [{"changed deps": {"artifacts/fingerprints/x.json": "modified"}}]
    assert _reasons(status, "components", {"artifacts/fingerprints/x.json": "0f"}) == ["the source changed"]
    upgrade = ["the source is now seen through its keyed fingerprint, artifacts/fingerprints/x.json "
               "(once, after an upgrade)"]
    assert _reasons(status, "components", {"data/source/x.csv": "0f"}) == upgrade  # from the source itself
    assert _reasons(status, "components", {"artifacts/x/fingerprint.json": "0f"}) == upgrade  # one stage a dataset


def test_a_fingerprint_that_says_its_source_cannot_be_read_is_said_with_the_reason(tmp_path):
    folder = tmp_path / "artifacts" / "fingerprints"
    folder.mkdir(parents=True)
    (folder / "x.json").write_text('{"dataset": "x", "unavailable": "data/x.csv: source not found; set ..."}')
    status = [{"changed deps": {"artifacts/fingerprints/x.json": "modified"}}]
    assert _reasons(status, "components", {"artifacts/fingerprints/x.json": "0f"}, tmp_path) == [
        "its source cannot be read (data/x.csv: source not found; set ...)"]


def test_a_change_of_what_a_stage_reads_names_each_key_with_its_old_and_new_value(tmp_path):
    """The version train last ran with (its MD5 in dvc.lock) is kept in the project's local
    state; without it (a fresh clone) the plan says its settings changed. DVC's words for the
    stage's own sections give way to the keys; another stage's keep theirs."""
    import hashlib
    import json

    from privflow.stage_settings import SEEN

    def settings(epochs: int, delta: float) -> bytes:
        return json.dumps({"dataset": "x", "settings": {"train": {"epochs": epochs, "model": "mlp"},
                                                        "privacy": {"delta": delta}}}).encode()

    path = "artifacts/fingerprints/train/x.json"
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_bytes(settings(8, 1e-6))
    ran_with = settings(5, 1e-5)
    (tmp_path / SEEN / "train" / "x").mkdir(parents=True)
    (tmp_path / SEEN / "train" / "x" / f"{hashlib.md5(ran_with).hexdigest()}.json").write_bytes(ran_with)
    status = [{"changed deps": {path: "modified", "params.yaml": {"train.epochs": "modified"}}}]
    named = ["its settings changed: train.epochs 5 -> 8, privacy.delta 1e-05 -> 1e-06"]
    assert _reasons(status, "components", {path: hashlib.md5(ran_with).hexdigest()}, tmp_path) == named
    # not kept here: DVC's param words, or the sections when only the dataset's entry changed
    assert _reasons(status, "components", {path: "0f"}, tmp_path) == ["param train.epochs modified"]
    alone = [{"changed deps": {path: "modified"}}]
    assert _reasons(alone, "components", {path: "0f"}, tmp_path) == ["what it reads of the dataset's settings changed"]
    report = "artifacts/fingerprints/report/x.json"  # the report's own section is `report`, not `train`
    (tmp_path / report).parent.mkdir(parents=True)
    (tmp_path / report).write_bytes(settings(8, 1e-6))
    (tmp_path / SEEN / "report" / "x").mkdir(parents=True)
    (tmp_path / SEEN / "report" / "x" / f"{hashlib.md5(ran_with).hexdigest()}.json").write_bytes(ran_with)
    status = [{"changed deps": {report: "modified", "params.yaml": {"train.epochs": "modified", "report": "modified"}}}]
    assert set(_reasons(status, "components", {report: hashlib.md5(ran_with).hexdigest()}, tmp_path)) == {
        "param train.epochs modified", named[0]}


def test_stages_that_spend_nothing_are_said_once_for_datasets_with_the_same_stages():
    """Never run, or may run only because a stage before them does: one line for the datasets
    that share the list; a stage that runs for its own reason, and every train, keep their own."""
    from privflow.flows.cli.plan_view import grouped_lines
    from privflow.flows.plan import PlannedStage

    planned = [PlannedStage(f"{stage}@{name}", "never run", True)
               for name in ("a", "b") for stage in ("ingest", "report")]
    planned += [PlannedStage("ingest@c", "never run", True), PlannedStage("train@a", "never run", True, epsilon=3.0)]
    planned += [PlannedStage(f"{stage}@{name}", f"if the outputs of ingest@{name} change", False)
                for name in ("d", "e") for stage in ("validate", "encrypt")]
    planned += [PlannedStage("ingest@d", "the source changed", True),
                PlannedStage("train@d", "if the outputs of encrypt@d change", False, epsilon=3.0)]
    assert grouped_lines(planned) == [
        "plan: ingest, report of a, b run: never run", "plan: ingest of c run: never run",
        "plan: validate, encrypt of d, e may run: if the stages before them write new outputs"]


def test_the_datasets_whose_source_cannot_be_read_are_named_with_the_reason(tmp_path):
    """From the fingerprints as last taken: `privflow run` leaves these datasets out and says why."""
    import networkx as nx

    from privflow.flows.plan import unreadable_sources
    from privflow.flows.stages import Dag

    folder = tmp_path / "artifacts" / "fingerprints"
    folder.mkdir(parents=True)
    (folder / "x.json").write_text('{"dataset": "x", "unavailable": "data/x.csv: source not found; set ..."}')
    (folder / "y.json").write_text('{"dataset": "y", "snapshot_id": "0f"}')
    dag = Dag(["fingerprint"], {"fingerprint": [folder]}, nx.DiGraph(), {})
    assert unreadable_sources(["x", "y", "z"], dag) == {"x": "data/x.csv: source not found; set ..."}
    assert unreadable_sources(["x"], Dag([], {}, nx.DiGraph(), {})) == {}  # a project made before fingerprints


def test_a_train_past_its_cap_is_said_to_refuse_not_to_leave_a_negative_budget():
    from privflow.flows.cli.plan_view import spending
    from privflow.flows.plan import PlannedStage

    def said(left: float, exact: bool) -> str:
        return spending(PlannedStage("train@a", "never run", True, epsilon=3.0, exact=exact, budget="a",
                                     left_after=left))

    assert said(1.5, True) == "spends epsilon 3.000 of budget a, 1.500 left after"
    assert said(1.5, False) == "spends up to epsilon 3.000 of budget a, at least 1.500 left after"
    assert said(-0.082, True) == ("spends epsilon 3.000 of budget a, over its cap by 0.082: it will refuse before "
                                  "reading any data, and charge nothing; lower train.target_epsilon, or have the "
                                  "data owner raise privacy.epsilon_cap")
    assert said(-1.991, False).startswith("spends up to epsilon 3.000 of budget a, which may go over its cap (by up "
                                          "to 1.991, composed with its earlier runs once its data is known)")
