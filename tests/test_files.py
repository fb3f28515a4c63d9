"""utrans_loc/files.py: output names, atomic writes on a full disk, one run per output folder."""

import errno
import os

import pytest
from conftest import TEST, run_main

from utrans_loc import files


# ----------------------------------------------------------------- output names, full disks, locks
@pytest.mark.parametrize("name", ["../elsewhere", "/tmp/run", "a/b", "..", ".", ""])
def test_an_output_name_that_is_a_path_is_refused(name):
    with pytest.raises(ValueError, match="output_name must be a plain name"):
        files.output_dir_for(name)


def test_cli_refuses_a_path_as_output_name(tmp_path):
    run = run_main(TEST, "--input_hdf5", "x.hdf5", "--input_model", "m.h5",
                   "--output_name", "../up", cwd=tmp_path)
    assert run.returncode == 2 and "output_name must be a plain name" in run.stderr
    assert not (tmp_path.parent / "up_outputs").exists()


def test_a_full_disk_keeps_the_previous_file_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    files.atomic_write_text(path, "epoch\n0\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="could not write .*history.csv .No space left on device.; "
                                      "its previous version"):
        files.atomic_write_text(path, "epoch\n0\n1\n")
    assert path.read_text() == "epoch\n0\n"
    assert os.listdir(tmp_path) == ["history.csv"]            # no temporary file left


def test_a_claimed_output_folder_refuses_a_second_run(tmp_path):
    out = str(tmp_path / "run_outputs")
    with files.claimed_output_dir(out, True, "pick another", "trainer1"):
        with pytest.raises(FileExistsError, match="already exists; it is left untouched: pick"):
            with files.claimed_output_dir(out, True, "pick another", "trainer1"):
                pass
        with pytest.raises(FileExistsError, match=f"in use by another running trainer1 "
                                                  f"\\(pid {os.getpid()}\\)"):
            with files.claimed_output_dir(out, False, "", "trainer1"):
                pass
        open(os.path.join(out, "history.csv"), "w").close()
    assert os.listdir(out) == ["history.csv"]                 # the lock goes, results stay
    with pytest.raises(RuntimeError):
        with files.claimed_output_dir(str(tmp_path / "failed_outputs"), True, "", "trainer1"):
            raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "failed_outputs").exists()          # an empty claim is undone
