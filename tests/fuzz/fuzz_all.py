"""atheris: every target in one process (what CI runs): `.venv/bin/python -m tests.fuzz.fuzz_all -max_total_time=15`."""

from tests.fuzz.run import main

if __name__ == "__main__":
    main("all")
