"""``python -m imgcate.cli``: the ``imgcate`` command."""

from imgcate.cli import run

run()
