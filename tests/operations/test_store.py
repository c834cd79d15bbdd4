"""RecordStore: a file that holds no record is logged, moved aside, and never stops the load."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.operations.store import RecordStore
from gateway.stateaccess import StateAccessError
from gateway.updates.operation import Operation, Status
from tests.logevents import capture_log_events
from tests.test_filelayer import record_fsyncs
from tests.unreadable import refuse_reading

#: Any JSON value (what a file of the right syntax and the wrong shape may hold).
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)


def _store(directory: Path) -> RecordStore[Operation]:
    store: RecordStore[Operation] = RecordStore(directory, Operation.from_json)
    store.save(Operation("good", "install", [], Status.STARTED))
    return store


class DurableDirectoryTests(SynchronousTestCase):
    """The first record's directory survives a power cut with the record."""

    def test_the_directory_made_for_the_first_record_is_fsynced_in_its_parent(self) -> None:
        """The store's directory, made at the first save, is fsynced in its parent (and its
        parent's, made too): it was made with ``Path.mkdir`` and never fsynced, so a power
        cut could take the directory with a record the gateway had acted on."""
        base = Path(self.mktemp()).absolute()
        fsynced = record_fsyncs(self)
        _store(base / "operations")
        self.assertIn(str(base), fsynced)
        self.assertIn(str(base.parent), fsynced)


class DurableRemovalTests(SynchronousTestCase):
    """A removed record stays removed after a power cut."""

    def test_a_removed_record_s_directory_is_fsynced(self) -> None:
        """Removing a record fsyncs its directory: the record of an operation whose end the
        disk refused is removed so that the next start does not resume an operation reported
        ended (docs/updates.md, uploads.md), and without the fsync a power cut brought it back."""
        directory = Path(self.mktemp()).absolute() / "operations"
        store = _store(directory)
        fsynced = record_fsyncs(self)
        store.remove("good")
        self.assertFalse(store.path_for("good").exists())
        self.assertEqual(fsynced, [str(directory)])
        store.remove("good")  # (absent is fine, and nothing to make durable)
        self.assertEqual(fsynced, [str(directory)])


class DamagedRecordTests(SynchronousTestCase):
    """The records of updates and uploads are written atomically: only damage from outside
    (or a person) makes one unusable. Such a file must not keep the service, and so the whole
    gateway, from starting: it is skipped with an error naming it and set aside."""

    def check_set_aside(self, store: RecordStore[Operation], bad: Path) -> None:
        events = capture_log_events(self)
        self.assertEqual([r.correlation_id for r in store.load_all()], ["good"])
        [error] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertIn(f"skipping unreadable operation {bad}: ", error)
        self.assertTrue(error.endswith(f"; moved to {bad}.damaged"), error)
        self.assertFalse(os.path.lexists(bad))
        self.assertTrue(os.path.lexists(f"{bad}.damaged"))
        events.clear()
        self.assertEqual([r.correlation_id for r in store.load_all()], ["good"])
        self.assertEqual(events, [])  # read once: the next start says nothing more

    def test_a_directory_or_a_loop_in_a_records_place(self) -> None:
        """A directory or a loop of symbolic links named as a record: it stopped the gateway's
        start ('gateway failed to start: [Errno 21] Is a directory: ...')."""
        for damage in ("directory", "loop"):
            store = _store(Path(self.mktemp()))
            bad = store.path_for("other")
            if damage == "directory":
                bad.mkdir()
            else:
                bad.symlink_to(bad.name)
            self.check_set_aside(store, bad)

    def test_a_record_of_the_wrong_shape_or_name(self) -> None:
        """JSON that is no record (a list), a record whose id is no string (it was loaded, and
        its first save failed: ``path_for`` encodes the id), or a whole record whose id is not
        the one its file is named for (a copy under another name: it was taken for a second
        record of the same id)."""
        good = json.dumps(Operation("x", "install", [], Status.STARTED).to_json())
        for content in ('["a"]', '{"correlation_id": 5, "action": "install", "modules": [], "status": "STARTED"}',
                        good):
            store = _store(Path(self.mktemp()))
            bad = store.path_for("other")
            bad.write_text(content)
            self.check_set_aside(store, bad)

    def test_a_missing_key_is_said_in_words(self) -> None:
        """A record without one of its keys is set aside saying which key it lacks; the line
        said only "'modules'" (a KeyError's text), as seen on a real gateway."""
        store = _store(Path(self.mktemp()))
        bad = store.path_for("other")
        bad.write_text('{"correlation_id": "other", "action": "install", "status": "STARTED"}')
        events = capture_log_events(self)
        store.load_all()
        [error] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(error, f"skipping unreadable operation {bad}: it has no 'modules'; moved to {bad}.damaged")

    def test_an_order_that_is_no_whole_number(self) -> None:
        """An operation's ``received`` or ``ended`` that is not a whole number: the service
        sorts its operations on them, which would raise comparing it with another's."""
        for key, value in (("received", "3"), ("ended", 1.5), ("received", True), ("ended", None)):
            store = _store(Path(self.mktemp()))
            bad = store.path_for("other")
            bad.write_text(json.dumps({**Operation("other", "install", [], Status.STARTED).to_json(), key: value}))
            self.check_set_aside(store, bad)

    def test_an_upload_field_of_the_wrong_type(self) -> None:
        """An upload record with a field of another type than an upload saves there (its own or
        a file's) is set aside, the line naming the field; it was read past in silence (no field
        was checked: ``checksum: [false]`` was taken as true, and sent Content-MD5)."""
        from gateway.uploads.operation import FileUpload, Upload, UploadState

        upload = Upload("other", [FileUpload("other#1", "/var/log/a", 3, md5="x", sha256="y",
                                             options={"provider": "generic"})],
                        UploadState.UPLOADING, start_time=1.0, info={"k": "v"}, checksum=True)
        stores = RecordStore(Path(self.mktemp()), Upload.from_json)
        stores.save(upload)
        self.assertEqual(stores.load_all(), [upload])  # (the real thing loads as it was)
        damages = [({"checksum": [False]}, "checksum: a boolean is required, not a list"),
                   ({"start_time": "1"}, "start_time: a finite number is required, not the text '1'"),
                   ({"start_time": float("nan")}, "start_time: a finite number is required"),
                   ({"start_time": float("inf")}, "start_time: a finite number is required"),
                   ({"ended": 1.5}, "ended: a whole number is required, not the number 1.5"),
                   ({"info": {"k": 1}}, "info.k: text is required, not the number 1"),
                   ({"state": "PAUSED"}, "state: one of "),
                   ({"files": {}}, "files: a list is required"),
                   ({"files": [{**upload.to_json()["files"][0], "size": True}]},
                    "files.0.size: a whole number is required, not the boolean true"),
                   ({"files": [{**upload.to_json()["files"][0], "md5": 5}]},
                    "files.0.md5: text is required, not the number 5")]
        for change, why in damages:
            store = RecordStore(Path(self.mktemp()), Upload.from_json)
            store.save(Upload("good", []))
            bad = store.path_for("other")
            bad.write_text(json.dumps({**upload.to_json(), **change}))
            events = capture_log_events(self)
            self.assertEqual([r.correlation_id for r in store.load_all()], ["good"])
            [error] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
            self.assertIn(f"skipping unreadable operation {bad}: {why}", error)
            self.assertTrue(os.path.lexists(f"{bad}.damaged"))

    @settings(max_examples=60, derandomize=True, deadline=None)
    @given(st.one_of(st.binary(max_size=64), JSON.map(lambda v: json.dumps(v).encode()),
                     st.dictionaries(st.sampled_from(["correlation_id", "action", "modules", "status", "message"]),
                                     JSON, max_size=5).map(lambda v: json.dumps(v).encode())))
    def test_no_content_breaks_the_load(self, content: bytes) -> None:
        """Whatever a record's file holds, the load returns the good records, and the file is
        either a record of its own name or set aside."""
        with tempfile.TemporaryDirectory() as directory:
            store = _store(Path(directory))
            bad = store.path_for("other")
            bad.write_bytes(content)
            loaded: list[Any] = store.load_all()
            ids = sorted(r.correlation_id for r in loaded)
            self.assertIn(ids, (["good"], ["good", "other"]))
            self.assertEqual(os.path.exists(bad), ids == ["good", "other"])


class UnreadableDirectoryTests(SynchronousTestCase):
    """The records' directory itself cannot be listed at start (a file in its place, or its
    parent's; no permission to read it)."""

    def test_a_directory_that_cannot_be_listed_is_logged_and_left_as_it_is(self) -> None:
        """A file where the records' directory (or its parent, ``updates``) belongs: the load
        is an error naming the directory and why, the service starts without the records, and
        nothing is moved or removed. The load found no records and said nothing: a gateway
        started so forgot its unfinished operations silently (an update DOWNLOADING, an
        upload PENDING were neither resumed nor listed)."""
        for broken in ("records", "parent"):
            base = Path(self.mktemp())
            directory = base / "parent" / "records"
            path = directory if broken == "records" else directory.parent
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not a directory")
            store: RecordStore[Operation] = RecordStore(directory, Operation.from_json)
            events = capture_log_events(self)
            self.assertEqual(store.load_all(), [])
            [error] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
            self.assertEqual(error, f"cannot list the operations in {directory} (Not a directory): starting"
                                    " without them; they are read at the next start that can list them")
            self.assertEqual(path.read_text(), "not a directory")

    def test_a_directory_the_user_may_not_list_stops_the_start(self) -> None:
        """No permission to list it (root's, after ``sudo twistd gateway``; the refusal injected:
        tests run as root): the load fails naming it, its owner and mode and what to do. The
        service started without the unfinished operations (the next start might not list them
        either)."""
        directory = Path(self.mktemp()) / "records"
        _store(directory)
        real_scandir = os.scandir

        def refusing(path: Any = ".") -> Any:
            if Path(path) == directory:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_scandir(path)

        self.patch(os, "scandir", refusing)
        store: RecordStore[Operation] = RecordStore(directory, Operation.from_json)
        with self.assertRaises(StateAccessError) as raised:
            store.load_all()
        self.assertTrue(str(raised.exception).startswith(f"{directory} (owner "), str(raised.exception))
        self.assertTrue(str(raised.exception).endswith(" and start again"), str(raised.exception))
        [kept] = directory.iterdir()
        self.assertEqual(kept.suffix, ".json")

    def test_a_record_the_user_may_not_read_stops_the_start_and_stays(self) -> None:
        """A record it may not read is not damaged: the load fails naming it; it was moved aside
        to ``<name>.damaged`` and the operation forgotten."""
        directory = Path(self.mktemp()) / "records"
        _store(directory)
        [record] = directory.iterdir()
        refuse_reading(self, record)
        store: RecordStore[Operation] = RecordStore(directory, Operation.from_json)
        with self.assertRaises(StateAccessError) as raised:
            store.load_all()
        self.assertTrue(str(raised.exception).startswith(f"{record} (owner "), str(raised.exception))
        self.assertEqual(list(directory.iterdir()), [record])

    def test_a_save_a_crash_cut_short_leaves_no_temporary_file_after_a_load(self) -> None:
        """docs/updates.md, uploads.md: the temporary file of a save a SIGKILL cut short is
        removed by the next start's load. A record's temporary file is named for the record,
        and a record forgotten since is never saved again: it stayed for good."""
        store = _store(Path(self.mktemp()))
        leftover = store.path_for("forgotten").with_name(f".{store.path_for('forgotten').name}.tmp")
        leftover.write_bytes(b'{"correlation_id": "forg')
        self.assertEqual([r.correlation_id for r in store.load_all()], ["good"])
        self.assertEqual(sorted(p.name for p in store.directory.iterdir()), [store.path_for("good").name])

    def test_a_missing_directory_holds_no_records(self) -> None:
        """A first start (no directory yet) finds no records and says nothing."""
        events = capture_log_events(self)
        store: RecordStore[Operation] = RecordStore(Path(self.mktemp()) / "records", Operation.from_json)
        self.assertEqual((store.load_all(), events), ([], []))


class ConcurrentSaveTests(SynchronousTestCase):
    """Saves run in the reactor's thread pool: two of one record (the cloud's ``start`` for
    two files of one upload, handled at once) may run together."""

    def test_two_saves_of_one_record_at_once_both_succeed(self) -> None:
        """The second save waits for the first. Both wrote the one temp file: the second
        removed the first's, whose rename then failed (``[Errno 2] No such file or directory:
        '.<id>.json.tmp' -> '<id>.json'``), and that ``start`` was answered 500."""
        store: RecordStore[Operation] = RecordStore(Path(self.mktemp()), Operation.from_json)
        first_paused, resume_first = threading.Event(), threading.Event()
        real_fsync = os.fsync
        paused: list[int] = []

        def fsync(fd: int) -> None:
            if threading.current_thread().name == "first" and not paused:
                paused.append(fd)
                first_paused.set()
                resume_first.wait(10)
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        errors: list[BaseException] = []

        def save(status: Status) -> None:
            try:
                store.save(Operation("op-1", "install", [], status))
            except BaseException as error:  # (reported by the test, not lost in the thread)
                errors.append(error)

        first = threading.Thread(target=save, args=(Status.STARTED,), name="first")
        second = threading.Thread(target=save, args=(Status.DOWNLOADING,), name="second")
        first.start()
        self.assertTrue(first_paused.wait(10))
        second.start()
        second.join(1)  # done at once without a lock; waiting for the first with one
        resume_first.set()
        first.join(10)
        second.join(10)
        self.assertEqual((errors, first.is_alive(), second.is_alive()), ([], False, False))
        [record] = store.load_all()
        self.assertEqual(record.status, Status.DOWNLOADING)  # the later save's
