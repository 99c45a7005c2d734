"""How DVC writes and reads its own files in privflow's process: whole or not at all, and
dvc.lock parsed once per version.

Imported by privflow.flows.stages, so every DVC call the flow makes (and a Dask worker's)
goes through these; a plain `dvc repro` is DVC's own. Each patch checks that the DVC
function it replaces is there and leaves DVC as it is otherwise.
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from privflow.lockfile import LOCK, write_atomically

def _write_dvc_files_atomically() -> None:
    """DVC writes dvc.lock (and dvc.yaml edits) with `open(path, "w+")` and then the YAML, in
    dvc.utils.serialize._common._dump_data: a kill in between cuts the file. In privflow's own
    process the same text goes to a file beside it, then `os.replace`, so a killed
    `privflow run` leaves the old lock or the new one. Local files only; a DVC without that
    function is left as it is (the copy privflow.lockfile keeps still mends a cut lock)."""
    from dvc.utils.serialize import _common, _yaml

    original = getattr(_common, "_dump_data", None)
    if original is None or getattr(original, "privflow_atomic", False):
        return

    def dump_data(path, data, dumper, fs=None, **dumper_args):
        if fs is not None and getattr(fs, "protocol", None) != "local":
            return original(path, data, dumper, fs=fs, **dumper_args)
        text = io.StringIO()
        dumper(data, text, **dumper_args)
        write_atomically(Path(path), text.getvalue())
        return None

    dump_data.privflow_atomic = True
    _common._dump_data = _yaml._dump_data = dump_data  # _yaml imported the name itself


def _write_rwlock_atomically() -> None:
    """The same for DVC's path-lock file (dvc.rwlock._edit_rwlock, rewritten in place as every
    stage starts and ends): the same guard, parse and errors as DVC's, then a rename."""
    import json
    from collections import defaultdict
    from contextlib import contextmanager

    from dvc import rwlock

    if getattr(rwlock._edit_rwlock, "privflow_atomic", False) or not hasattr(rwlock, "SCHEMA"):
        return

    @contextmanager
    def edit_rwlock(lock_dir, fs, hardlink):
        path = fs.join(lock_dir, rwlock.RWLOCK_FILE)
        with rwlock.make_lock(fs.join(lock_dir, rwlock.RWLOCK_LOCK), tmp_dir=lock_dir, hardlink_lock=hardlink):
            try:
                with fs.open(path, encoding="utf-8") as handle:
                    lock = rwlock.SCHEMA(json.load(handle))
            except FileNotFoundError:
                lock = rwlock.SCHEMA({})
            except json.JSONDecodeError as error:
                raise rwlock.RWLockFileCorruptedError(path) from error
            except rwlock.Invalid as error:
                raise rwlock.RWLockFileFormatError(path) from error
            lock["read"] = defaultdict(list, lock["read"])
            lock["write"] = defaultdict(dict, lock["write"])
            yield lock
            write_atomically(Path(path), json.dumps(lock))

    edit_rwlock.privflow_atomic = True
    rwlock._edit_rwlock = edit_rwlock


# Why dvc.lock gets its own path. DVC writes it after every stage it runs by parsing it
# round-trip (ruamel's comment-keeping loader), updating the stage's entry and dumping it
# all again; and it parses it (safe loader) again for every stage it collects. privflow's
# exact code deps make it long (5 demo datasets: 40 stages, 212 KB), so on this session's
# 2-core machine each stage paid 2.8 s for the round-trip parse, 0.5 s per plain parse and
# 1.4 s for the dump: most of a run's time outside the stages. dvc.lock is written by
# DVC alone and holds no comments to keep, so here it is parsed with the plain loader, at
# most once per version (a text seen before, DVC's own write included, is answered from
# memory, as a copy: DVC edits what it gets), and dumped by DVC's own dumper one stage's
# entry at a time, each entry's text kept until the entry changes: byte for byte the text
# DVC writes (tests/integration/test_dvcfiles.py), at the cost of the entries that changed.
_PARSED_KEPT = 8  # texts remembered: dvc.yaml, dvc.lock and .dvc files of one project
_parsed: OrderedDict[str, object] = OrderedDict()  # a text -> its plain parse (the only one remembered)


def _keep(memo: OrderedDict, key, value) -> None:
    """`value` under `key`, the most recently used, and only the last _PARSED_KEPT kept."""
    memo[key] = value
    memo.move_to_end(key)
    while len(memo) > _PARSED_KEPT:
        memo.popitem(last=False)


def _parse_once() -> None:
    """DVC's plain YAML parse, remembered by its text: the same text parses to the same data."""
    from dvc.utils import strictyaml
    from dvc.utils.serialize import _yaml

    original = _yaml.parse_yaml
    if getattr(original, "privflow_once", False):
        return

    def parse_yaml(text, path, typ="safe"):
        if typ != "safe":
            return original(text, path, typ=typ)
        _keep(_parsed, text, _parsed[text] if text in _parsed else original(text, path, typ=typ))
        return copy.deepcopy(_parsed[text])

    parse_yaml.privflow_once = True
    _yaml.parse_yaml = strictyaml.parse_yaml = parse_yaml  # strictyaml imported the name itself


def _validate_once() -> None:
    """DVC's schema check of a file it loads (dvc.utils.strictyaml.validate, given the text),
    once per text and schema: its result depends on nothing else, and it cost more than the
    parse (voluptuous over every entry of dvc.lock, for every stage DVC collects)."""
    from dvc.utils import strictyaml

    original = strictyaml.validate
    if getattr(original, "privflow_once", False):
        return
    passed: OrderedDict[str, list] = OrderedDict()  # text -> the schemas it passed (the objects, not ids)

    def validate(data, schema, text=None, path=None, rev=None):
        if text is None:  # a check of data DVC built itself, not of a file's text
            return original(data, schema, text=text, path=path, rev=rev)
        if any(seen is schema for seen in passed.get(text, ())):
            return data
        checked = original(data, schema, text=text, path=path, rev=rev)  # raises when invalid: never kept
        _keep(passed, text, [*passed.get(text, ()), schema])
        return checked

    validate.privflow_once = True
    strictyaml.validate = validate


def _lock_without_round_trip() -> None:
    """DVC's dvc.lock update (dvc.dvcfile.Lockfile.dump_stages: `with modify_yaml(path)`),
    from the plain parse; any other file keeps DVC's round trip (dvc.yaml has a user's comments)."""
    from dvc import dvcfile
    from dvc.utils.serialize import _yaml

    original = dvcfile.modify_yaml
    if getattr(original, "privflow_once", False):
        return

    @contextmanager
    def modify_yaml(path, fs=None):
        if Path(path).name != LOCK.name or (fs is not None and getattr(fs, "protocol", None) != "local"):
            with original(path, fs=fs) as data:
                yield data
            return
        text = Path(path).read_text(encoding="utf-8") if os.path.exists(path) else ""
        data = _yaml.parse_yaml(text, path) if text else {}
        yield data
        text = lock_text(data)
        write_atomically(Path(path), text)
        _keep(_parsed, text, copy.deepcopy(data))  # DVC goes on editing `data`

    modify_yaml.privflow_once = True
    dvcfile.modify_yaml = modify_yaml


_entry_texts: dict[str, str] = {}  # one stage's entry (as JSON) -> its lines in dvc.lock


def _dumped(data) -> str:
    from dvc.utils.serialize import _yaml

    written = io.StringIO()
    _yaml._dump(data, written)
    return written.getvalue()


def lock_text(data: dict) -> str:
    """dvc.lock's text as DVC's dumper writes `data`. The lock is `schema` then `stages`, one
    entry per stage; an entry's lines depend on it alone (the dumper folds long lines by
    their column, the same at every position), so each is dumped on its own and kept."""
    global _entry_texts
    if list(data) != ["schema", "stages"] or not data["stages"]:
        return _dumped(data)
    texts = {}
    for name, entry in data["stages"].items():
        key = json.dumps([name, entry])
        texts[key] = _entry_texts.get(key) or _dumped({"stages": {name: entry}}).removeprefix("stages:\n")
    _entry_texts = texts  # only the entries of the lock as it is now
    return _dumped({"schema": data["schema"]}) + "stages:\n" + "".join(texts.values())


_write_dvc_files_atomically()
_write_rwlock_atomically()
_parse_once()
_validate_once()
_lock_without_round_trip()
