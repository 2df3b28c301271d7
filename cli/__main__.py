"""``python -m aigc_kit.cli`` runs the ``aigc-kit`` command."""

from . import main

main()
