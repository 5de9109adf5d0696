"""``python -m imgcate.cli``: the ``imgcate`` command."""

from imgcate.cli import script

script()
