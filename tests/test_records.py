"""Record files (core/records.py): created whole, then rewritten in place in two slots. A save cut short
at any byte leaves the last durable version or the new one, never half of one nor an older one than
was synced; records of the earlier format (one JSON object) are still read; the cost of a save in
syncs and renames."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from s3files.core.records import SLOT_MIN, CacheFolder, Record, parse_record


def record(size: int, **kw: Any) -> Record:
    return Record(id="c0ffee", key="k", base_etag=None, base_size=0, size=size, state="acked",
                  acknowledged=True, metadata={"mode": "33188"}, **kw)


def opened(tmp_path: Path) -> CacheFolder:
    folder = CacheFolder(tmp_path / "cache")
    folder.open()
    return folder


def read(folder: CacheFolder) -> int:
    (found,) = folder.records()
    return found.size


def test_a_save_cut_short_anywhere_leaves_the_last_durable_version_or_the_new_one(tmp_path: Path) -> None:
    """Durable save of size 1, two saves that were not synced (2, 3), then save 4 torn at every length
    (a machine that died while writing it): the record read is 4 when its slot is whole, else 1, the
    last durable version, whose slot is never written meanwhile (a machine that died before any of the
    later saves reached its disk also finds 1)."""
    folder = opened(tmp_path)
    folder.save(record(1), durable=True)
    path = folder.files / "c0ffee.json"
    durable_slot = path.read_bytes()[:SLOT_MIN]
    folder.save(record(2))
    folder.save(record(3))
    assert read(folder) == 3 and path.read_bytes()[:SLOT_MIN] == durable_slot
    before = path.read_bytes()
    folder.save(record(4))
    after = path.read_bytes()
    changed = [i for i in range(len(after)) if before[i] != after[i]]
    assert changed and min(changed) >= SLOT_MIN  # only the other slot is written
    for cut in range(min(changed) + 1, max(changed) + 2):
        torn = after[:cut] + before[cut:]  # the write reached the disk up to ``cut``
        assert parse_record(torn)["size"] == (4 if cut > max(changed) else 1)
    machine_crash = durable_slot + bytes(len(after) - SLOT_MIN)  # nothing since the durable save reached the disk
    assert parse_record(machine_crash)["size"] == 1


def test_a_durable_save_moves_the_slot_that_is_kept(tmp_path: Path) -> None:
    folder = opened(tmp_path)
    folder.save(record(1), durable=True)
    folder.save(record(2), durable=True)
    path = folder.files / "c0ffee.json"
    kept = path.read_bytes()[SLOT_MIN:]
    folder.save(record(3))
    assert path.read_bytes()[SLOT_MIN:] == kept and read(folder) == 3


def test_a_record_that_outgrows_its_slots_is_written_again_whole(tmp_path: Path) -> None:
    folder = opened(tmp_path)
    folder.save(record(1), durable=True)
    sent = {str(i): [8 * 2**20, i + 1, "e" * 32] for i in range(200)}
    folder.save(replace(record(2), sent=sent), durable=True)
    path = folder.files / "c0ffee.json"
    assert path.stat().st_size > 2 * SLOT_MIN and (path.stat().st_size // 2) % SLOT_MIN == 0
    (found,) = folder.records()
    assert found.size == 2 and found.sent == sent
    folder.save(record(3))
    assert read(folder) == 3


def test_a_record_of_the_earlier_format_is_read(tmp_path: Path) -> None:
    folder = opened(tmp_path)
    (folder.files / "c0ffee.json").write_text(json.dumps(vars(record(7))))
    assert read(folder) == 7


def test_a_record_with_no_whole_slot_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = opened(tmp_path)
    (folder.files / "c0ffee.json").write_bytes(b"s3files-record 1 99 0\n{" + bytes(2 * SLOT_MIN - 24))
    assert folder.records() == [] and "cannot read cache record" in caplog.text
    assert (folder.files / "c0ffee.json").exists()


def test_syncs_and_renames_of_a_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first save creates the file (a rename, and the folder synced when durable); later durable
    saves are one fdatasync of the record after the data file's, with no rename and no folder sync
    unless a file was created in the folder since its last sync."""
    folder = opened(tmp_path)
    calls: list[str] = []
    real = {name: getattr(os, name) for name in ("fdatasync", "fsync", "replace")}

    def spy(name: str) -> Any:
        def call(*args: Any) -> Any:
            target = args[0] if name == "replace" else os.readlink(f"/proc/self/fd/{args[0]}")
            calls.append(f"{name} {Path(target).name}")
            return real[name](*args)

        return call

    for name in real:
        monkeypatch.setattr(os, name, spy(name))
    fd, _ = folder.new_data("c0ffee", 3)
    os.close(fd)
    folder.save(record(3), durable=True)
    assert calls == ["fdatasync c0ffee.data", "fdatasync c0ffee.tmp", "replace c0ffee.tmp", "fsync files"]
    calls.clear()
    folder.save(record(3), durable=True)
    assert calls == ["fdatasync c0ffee.data", "fdatasync c0ffee.json"]
    calls.clear()
    folder.save(record(3), durable=True, data=False)
    folder.save(record(3))
    assert calls == ["fdatasync c0ffee.json"]
    calls.clear()
    os.close(folder.open_side("c0ffee-1.acked"))
    folder.save(record(3), durable=True, data=False)
    assert calls == ["fdatasync c0ffee.json", "fsync files"]  # the side file's name lasts too
