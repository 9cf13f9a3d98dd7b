"""``python -m aigw.cli``: what ``aigw serve`` runs ``migrate`` with in a child process."""

from aigw.cli import main

main()
