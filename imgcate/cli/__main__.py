"""``python -m imgcate.cli``: the ``imgcate`` command."""

from imgcate.cli import main

main(prog_name="imgcate")
