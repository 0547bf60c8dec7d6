"""``python -m vlm_ad.cli`` runs the command line."""

from vlm_ad.cli import main

main()
