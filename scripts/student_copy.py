"""Make the student copy of the notebooks: ``.venv/bin/python scripts/student_copy.py notebooks --out student/``.

A thin wrapper around :func:`labkit.exercises.student_copy.main` (see that module for the marker rules).
"""
import sys

from labkit.exercises.student_copy import main

if __name__ == "__main__":
    sys.exit(main())
