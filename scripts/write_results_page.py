"""Write ``docs/RESULTS.md``, its figures and the README's generated blocks from the committed run files.

The page logic lives in :mod:`labkit.results_page`; ``labkit reproduce --publish`` runs it too. Usage::

    python scripts/write_results_page.py
"""
from labkit.results_page import main

if __name__ == "__main__":
    main()
