"""Files that are never lost: atomic writes, new output folders, text reports.

Every file the pipeline writes goes through :func:`atomic_path`: a temporary
name beside the target, flushed to disk, then renamed, so a kill at any moment
leaves the old complete file or the new one, never half of one. Output folders
are created only when they do not exist yet (:func:`new_output_dir`): an
earlier result is never overwritten.

Must not import keras or any deep-learning backend (the data builders use it).
"""

from __future__ import annotations

import contextlib
import datetime
import os


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside ``path``; on success fsync it and rename it
    onto ``path``; on any error (or interruption) remove it.

    ``suffix`` ends the temporary name, for writers that insist on an
    extension (Keras: ``.weights.h5``).
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem = name[:-len(suffix)] if suffix and name.endswith(suffix) else name
    tmp = os.path.join(folder, f".{stem}.partial{os.getpid()}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(path, save, suffix=""):
    """Write ``path`` by calling ``save(temporary_path)``, then rename (for writers
    that take a path, not a file object)."""
    with atomic_path(path, suffix) as tmp:
        save(tmp)
    return path


def atomic_write(path, writer, mode="w"):
    """Write ``path`` by calling ``writer(file_object)`` on a temporary file, then rename."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        writer(fh)
    return path


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_save_weights(model, path):
    """``model.save_weights(path)`` atomically (Keras needs the ``.weights.h5`` suffix)."""
    return atomic_save(path, model.save_weights, suffix=".weights.h5")


def check_output_parent(output_dir):
    """The folder that will hold ``output_dir`` exists and is writable."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise OSError(f"cannot write {output_dir}: {parent} is not a writable folder")


def output_dir_for(output_name):
    """``<output_name>_outputs`` as an absolute path (the upstream naming)."""
    return os.path.abspath(f"{output_name}_outputs")


def check_new_output_dir(output_dir, hint="choose another --output_name (or move the folder away)"):
    """Refuse (FileExistsError) an output folder that exists; check its parent is writable."""
    if os.path.exists(output_dir):
        raise FileExistsError(f"output folder {output_dir} already exists; it is left untouched: "
                              f"{hint}")
    check_output_parent(output_dir)
    return output_dir


def write_report(path, title, items):
    """Write ``name: value`` lines to a text report (atomically)."""
    text = [f"{title} report, {datetime.datetime.now().isoformat(timespec='seconds')}"]
    text += [f"{name}: {value}" for name, value in items]
    return atomic_write_text(path, "\n".join(text) + "\n")
